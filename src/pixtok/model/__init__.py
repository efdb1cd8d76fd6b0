"""The Hugging Face model folder: config, modeling, processing. Relative imports only, so that a
saved model carries this code to the Hub (``trust_remote_code=True``)."""
