"""Reference answers for exercises/ex00_autograd.py: tinyllm's own ops."""

from tinyllm.functional.elementwise import Mul, Tanh, unbroadcast
from tinyllm.functional.linalg import Matmul
from tinyllm.functional.reduce import Sum
from tinyllm.functional.softmax import Softmax

__all__ = ["Matmul", "Mul", "Softmax", "Sum", "Tanh", "unbroadcast"]
