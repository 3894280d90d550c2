"""WordNet 3.0: finding a readable copy, reading vocabularies, and building the hierarchy T."""
