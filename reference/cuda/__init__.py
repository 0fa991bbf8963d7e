"""CUDA kernels (numba-cuda) of the hot families, with the CPU references' contract.

The caller picks the device by the module it calls: ``reference.activations.softmax`` runs on
the CPU, ``reference.cuda.softmax.softmax`` on the GPU. Same argument names, same validation
(``TypeError``/``ValueError`` naming the argument), ``out, ctx = f(...)`` and
``grads = f_backward(ctx, grad_out)`` in the same order, but every array argument is a CUDA
device array (anything with ``__cuda_array_interface__``: a numba device array, a torch CUDA
tensor, a CuPy array; under numba's simulator its fake device arrays) and every result is a
numba device array. Inputs are shared without copies; numba's default interface policy
synchronises on the producer's stream before a kernel reads it, and the kernels run on
numba's default stream. No function copies data back to the host, except the cross-entropy
forward, which reads one integer (the count of out-of-range labels) to raise a ``ValueError``.

Modules: ``elementwise`` (sigmoid, tanh, relu, leaky relu, GELU exact and tanh),
``softmax`` (softmax, log-softmax, cross-entropy), ``norm`` (batch norm, layer norm),
``linear`` (dense layer, a tiled shared-memory matrix product), ``optim`` (the in-place
optimizer steps ``sgd_``, ``adagrad_``, ``rmsprop_``, ``adam_``, ``adamw_``: they update
``params`` and the state's buffers where they lie and return None, as the CPU in-place steps
do; the pure, differentiable steps have no GPU kernel).

Needs the ``numba-cuda`` package (the maintained CUDA target; ``import reference`` does not
import this package, so the CPU library works without it). Tested without a GPU under
``NUMBA_ENABLE_CUDASIM=1`` (``suites/cudasim``).
"""

from __future__ import annotations

import importlib.util

if importlib.util.find_spec("numba_cuda") is None:  # numba's own numba.cuda is deprecated
    raise ImportError("reference.cuda needs the numba-cuda package (pip install numba-cuda; "
                      "on a GPU machine numba-cuda[cu12] or numba-cuda[cu13] for the toolkit)")

__all__ = ["elementwise", "softmax", "norm", "linear", "optim"]
