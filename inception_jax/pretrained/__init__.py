"""Pretrained weights: exported model directories (model_io), the timm / Keras importers, and the `convert` and
`predict` commands.
"""
