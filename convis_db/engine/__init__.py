"""The Concept Visualization engine: windows, encoding, ranking, propagation up T, saliency maps."""
