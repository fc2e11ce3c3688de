"""What feeds a model besides the dataset files (data.py reads those): released ViT weights by
name (pretrained.py), how an image becomes the model's input (transforms.py; its GPU part,
on_device.py), and the built-in synthetic set (synthetic.py)."""
