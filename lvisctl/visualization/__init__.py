"""Looking at results: ground truth and predictions drawn on images (``lvisctl visualize``)."""
