"""Data: the TFDS sources (and the dataset this package generates itself), the input pipeline, preprocessing and
evaluation crops. Importing the package imports nothing heavy; `sources` loads TFDS and registers the builders."""
