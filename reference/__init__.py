"""refbench reference library: Numba forward and hand-written backward of ML algorithms.

Each family is a module (``reference.activations``, ``reference.losses``, ...). Every
algorithm is a pair of public functions::

    out, ctx = algo(x, ..., **params)      # forward; ctx is what backward needs
    grads = algo_backward(ctx, grad_out)   # vector-Jacobian product

``grads`` is a tuple with one array per differentiable input, in the order the forward
takes them (the docstring lists it). Inputs are float32 or float64 numpy arrays; outputs
have the input's dtype. Bad input raises ``TypeError``/``ValueError`` naming the argument.

This package needs numpy, numba and scipy only; it never imports torch.
"""

__all__ = ["activations", "losses", "regularizers"]
