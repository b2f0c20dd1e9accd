"""Kubernetes objects reidflow creates on a cluster (the training operator's PyTorchJob), built
and checked offline against the API clients' models before anything is submitted."""
