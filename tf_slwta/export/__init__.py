"""Export to TensorFlow Serving (saved_model.py) and clients for it (client.py)."""
