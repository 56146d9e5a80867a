"""The worker: claims tasks from its node (then the peer), computes them, posts results."""
