"""What a run reads: released ViT weights by name (pretrained.py), image files and folders
(images.py), and the built-in synthetic set (synthetic.py)."""
