"""PyTC v1.0.0 architectures beyond the U-Nets: FPN backbones, DeepLabV3, UNETR, Swin UNETR.

Each module builds one family with PyTC's module names and shapes (a PyTC checkpoint loads
key for key) and PyTC's forward computation; `backend.trainer.models.build_model` picks one.
"""
