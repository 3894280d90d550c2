"""CLIP models: resolving --model/--pretrained, loading with open_clip, and encoding text and images."""
