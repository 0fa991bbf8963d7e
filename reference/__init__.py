"""refbench reference library: Numba forward and hand-written backward of ML algorithms.

Each family is a module (``reference.activations``, ``reference.losses``, ...). Every
algorithm is a pair of public functions::

    out, ctx = algo(x, ..., **params)      # forward; ctx is what backward needs
    grads = algo_backward(ctx, grad_out)   # vector-Jacobian product

``grads`` is a tuple with one array per differentiable input, in the order the forward
takes them (the docstring lists it). Inputs are float32 or float64 numpy arrays; outputs
have the input's dtype. Bad input raises ``TypeError``/``ValueError`` naming the argument.

This package needs numpy, numba and scipy (and uses Intel's MKL for single-thread products
where the ``mkl`` wheel is installed: ``reference/_blas.py``); it never imports torch.
"""

__all__ = [
    "activations",   # sigmoid, tanh, relu, leaky relu, step, softmax, log-softmax, GELU
    "losses",        # MSE, L1, BCE (+ logits), cross-entropy, NLL, hinge, multi-margin
    "regularizers",  # L1 and L2 penalties
    "layers",        # linear, dropout, dropout2d, embedding
    "conv",          # conv2d
    "pool",          # max_pool2d, avg_pool2d
    "norm",          # batch norm, layer norm
    "blocks",        # residual basic block, MobileNet block, Inception block
    "rnn",           # Elman RNN, GRU, LSTM (multi-layer, bidirectional)
    "attention",     # scaled dot-product, multi-head self-attention, encoder layer, positions
    "optim",         # SGD, Adagrad, RMSprop, Adam, AdamW steps (pure, differentiable)
    "schedules",     # step, exponential, cosine, linear warmup learning rates
    "init",          # fans, gains, zeros/normal/uniform/Xavier/Kaiming initialisation
    "early_stopping",  # min/max, min_delta, patience, baseline, restore-best
    "linear_models",   # least squares (normal equations, GD), ridge, lasso, polynomial
    "logistic_svm",    # logistic regression (binary, multinomial), linear SVM
    "neighbors",       # squared distances, exact k-NN classification and regression
    "naive_bayes",     # Gaussian naive Bayes
    "tree",            # decision tree (gini, entropy)
    "cluster",         # k-means (Lloyd), agglomerative linkage (single, complete, average, ward)
    "mixture",         # Gaussian mixture by EM (full, diagonal)
    "models",          # MLP, CNN, perceptron training steps composed from the layers
]

# Numba's code generation target is fixed by the first function it compiles in a process; the
# vector width chosen in _jit must be in place before then (see its docstring).
from reference import _jit  # noqa: E402, F401
