"""A strict stand-in for CuPy, for tests and for machines without a GPU.

This is a *simulation of CuPy's rules*, not a GPU: the numbers are computed by NumPy on the
host.  What it simulates is what goes wrong when NumPy code meets a GPU:

* its arrays are a type of their own (``strict_cupy.ndarray``), so ``isinstance(x, np.ndarray)``
  is False and ``backend.get_array_module(x)`` returns this module, as it would return ``cupy``;
* they refuse to become NumPy arrays implicitly: ``np.asarray(x)`` raises CuPy's own
  ``TypeError`` ("Implicit conversion to a NumPy array is not allowed. Please use `.get()` ...");
* mixing host and device fails: ``x + numpy_array``, ``x[...] = numpy_array`` and any NumPy
  function applied to a device array (``np.exp(x)``, ``np.mean(x)``) raise ``TypeError``
  (NumPy and Python scalars are fine, as in CuPy);
* the module offers only functions CuPy has (no ``erf``: CuPy keeps it in ``cupyx.scipy.special``),
  ``asarray`` / ``asnumpy`` / ``.get()`` to move data, ``add.at`` for scatter-adds and
  ``cuda.Device().synchronize()``;
* reductions and integer indexing return 0-d device arrays, as CuPy does, never host scalars;
* every host <-> device transfer is counted, with the line of code that caused it
  (``count_transfers``): ``asarray`` of host data, ``.get()`` / ``asnumpy``, ``float(x)``,
  ``int(x)``, ``bool(x)``, ``.item()``, printing, and indexing with a host index array.

Stricter than CuPy in one place, on purpose: CuPy lets ``np.exp(x)`` through NumPy's dispatch
protocols (``__array_ufunc__`` / ``__array_function__``) and runs ``cupy.exp``.  Here every NumPy
function refuses a device array, because in ``lora_np`` a NumPy function meeting a device array
means the code believed it held a host array, the mistake that fails on a GPU as soon as the
function is one CuPy lacks or the result is handed to NumPy.

Use it through ``backend.cupy_stand_in`` (tests: the ``gpu-strict`` device parameter in
``tests/conftest.py``), so that ``device="gpu"`` resolves to this module::

    import lora_np as ln
    from lora_np import backend, strict_cupy
    with backend.cupy_stand_in(strict_cupy), strict_cupy.count_transfers() as moves:
        layer = ln.LoRALinear(8, 4, 2, 4.0, device="gpu")    # its arrays are strict_cupy arrays
        ...
    print(moves.report())
"""

from __future__ import annotations

import builtins
import contextlib
import sys
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

# dtypes and constants: CuPy re-exports NumPy's own objects
from numpy import (  # noqa: F401
    bool_, complex64, complex128, dtype, e, finfo, float16, float32, float64, floating, generic, iinfo,
    inexact, inf, int8, int16, int32, int64, integer, intp, issubdtype, nan, newaxis, number, pi,
    promote_types, signedinteger, uint8, uint16, uint32, uint64, unsignedinteger,
)

_NO_IMPLICIT = "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to construct a NumPy array explicitly."

# ----------------------------------------------------------------------------------------
# counting transfers


@dataclass
class Transfers:
    """Host <-> device copies seen while this counter was active."""

    to_device: int = 0  # host -> device copies (asarray of host data, host index arrays, .set)
    to_host: int = 0  # device -> host copies (.get, asnumpy, float(), int(), bool(), .item(), printing)
    events: list = field(default_factory=list)  # (direction, nbytes, "file:line in function")

    @property
    def total(self) -> int:
        return self.to_device + self.to_host

    def report(self) -> str:
        lines = [f"{self.to_device} host->device, {self.to_host} device->host"]
        lines += [f"  {d:<14} {n:>9} bytes  at {where}" for d, n, where in self.events]
        return "\n".join(lines)


_active: list = []  # the counters of the enclosing count_transfers blocks


@contextlib.contextmanager
def count_transfers():
    """Count the transfers made inside the block: ``with count_transfers() as t: ...; t.to_host``."""
    counter = Transfers()
    _active.append(counter)
    try:
        yield counter
    finally:
        _active.remove(counter)


_BOUNDARY = (__file__, __file__.replace("strict_cupy.py", "backend.py"))  # to_device / to_numpy name their caller


def _caller() -> str:
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename in _BOUNDARY:
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{frame.f_code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno} in {frame.f_code.co_name}"


def _record(direction: str, nbytes: int) -> None:
    if not _active:
        return
    where = _caller()
    for counter in _active:
        if direction == "host->device":
            counter.to_device += 1
        else:
            counter.to_host += 1
        counter.events.append((direction, int(nbytes), where))


# ----------------------------------------------------------------------------------------
# crossing the boundary


def _host_operand(obj, what):
    return TypeError(
        f"Unsupported type {type(obj)}: {what} got a NumPy array (host memory) together with a device array; "
        "move it first with xp.asarray(...) (backend.to_device), or bring the device array back with .get()"
    )


def _numpy_function(name):
    return TypeError(
        f"{name} was given a device array: NumPy functions do not take device arrays; use "
        "xp = backend.get_array_module(x) and xp.<function>, or move the array to the host with .get() "
        "(backend.to_numpy) at the edge"
    )


def _unwrap(obj, what):
    """Device arrays -> their data; host arrays are refused; lists and tuples are walked."""
    if isinstance(obj, ndarray):
        return obj._data
    if isinstance(obj, np.ndarray):
        raise _host_operand(obj, what)
    if isinstance(obj, tuple):
        return tuple(_unwrap(o, what) for o in obj)
    if isinstance(obj, list):
        return [_unwrap(o, what) for o in obj]
    return obj


def _wrap(value):
    """NumPy results -> device arrays; a NumPy scalar becomes a 0-d device array, as in CuPy."""
    if isinstance(value, np.ndarray):
        return ndarray(value)
    if isinstance(value, np.generic):
        return ndarray(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _check_dtype(data):
    if data.dtype.kind not in "biufc":
        raise TypeError(f"CuPy arrays hold numbers and booleans only, got dtype {data.dtype}")
    return data


def _unwrap_index(index):
    """An index: device arrays, slices, ints; a host index array is allowed (CuPy copies it over) and counted."""
    if isinstance(index, tuple):
        return tuple(_unwrap_index(i) for i in index)
    if isinstance(index, ndarray):
        return index._data
    if isinstance(index, (np.ndarray, list)):
        host = np.asarray(index)
        _record("host->device", host.nbytes)
        return host.copy()
    return index


# ----------------------------------------------------------------------------------------
# the array


class _Pointer(SimpleNamespace):
    """``x.data.ptr``: the address, to check whether two arrays share memory."""


class Device:
    """``cupy.cuda.Device``: one simulated device; ``synchronize`` has nothing to wait for."""

    id = 0

    def __init__(self, device=None):
        pass

    def synchronize(self) -> None:
        pass

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __repr__(self):
        return "<strict_cupy simulated Device 0 (the host; not a GPU)>"


def _binary(name, inplace=False):
    op = getattr(np.ndarray, name)

    def method(self, other):
        if isinstance(other, (list, tuple)):  # CuPy takes arrays and scalars only: a list is host data
            raise TypeError(f"Unsupported type {type(other)}: the operator {name} got a Python {type(other).__name__}")
        other = _unwrap(other, f"the operator {name}")
        if inplace:
            op(self._data, other)
            return self
        return _wrap(op(self._data, other))

    method.__name__ = name
    return method


def _unary(name):
    op = getattr(np.ndarray, name)

    def method(self):
        return ndarray(op(self._data))

    method.__name__ = name
    return method


class ndarray:
    """A device array (simulated): NumPy data the host may not touch without an explicit copy."""

    __slots__ = ("_data",)
    __hash__ = None

    def __init__(self, data):
        if not isinstance(data, np.ndarray):
            raise TypeError("strict_cupy.ndarray wraps device data; create arrays with strict_cupy.asarray / zeros / ...")
        self._data = _check_dtype(data)

    # --- refusing the host ----------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError(_NO_IMPLICIT)

    def __array_function__(self, func, types, args, kwargs):
        raise _numpy_function(f"{func.__module__}.{func.__name__}")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        # A NumPy scalar on the left of an operator (np.float32(2) * x) arrives here as np.multiply:
        # CuPy accepts it, so does the stand-in.  Every other NumPy ufunc call (np.exp(x)) is refused.
        if method == "__call__" and not kwargs and len(inputs) == 2 and builtins.all(
            isinstance(i, (ndarray, np.generic)) for i in inputs
        ):
            return _wrap(ufunc(*_unwrap(inputs, f"numpy.{ufunc.__name__}")))
        for i in inputs:
            if isinstance(i, np.ndarray):
                raise _host_operand(i, f"numpy.{ufunc.__name__}")
        raise _numpy_function(f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}"))

    # --- moving data explicitly -----------------------------------------------------
    def get(self, stream=None, out=None):
        """Copy to the host: a NumPy array (a transfer)."""
        _record("device->host", self._data.nbytes)
        return self._data.copy()

    def set(self, arr, stream=None):
        """Copy host data into this array (a transfer)."""
        if not isinstance(arr, np.ndarray) or arr.shape != self.shape:
            raise ValueError(f"set() needs a NumPy array of shape {self.shape}")
        _record("host->device", arr.nbytes)
        self._data[...] = arr

    def item(self):
        _record("device->host", self._data.itemsize)
        return self._data.item()

    def tolist(self):
        _record("device->host", self._data.nbytes)
        return self._data.tolist()

    def _scalar(self, kind):
        _record("device->host", self._data.itemsize)
        return kind(self._data)

    def __float__(self):
        return self._scalar(float)

    def __int__(self):
        return self._scalar(int)

    def __complex__(self):
        return self._scalar(complex)

    def __bool__(self):
        return self._scalar(bool)

    # (no __index__: CuPy leaves it out on purpose, as it would be an implicit device->host copy)

    def __repr__(self):
        _record("device->host", self._data.nbytes)
        return repr(self._data)

    def __str__(self):
        _record("device->host", self._data.nbytes)
        return str(self._data)

    def __format__(self, spec):
        _record("device->host", self._data.nbytes)
        return format(self._data.item() if self._data.ndim == 0 else self._data, spec)

    # --- metadata (no transfer) -----------------------------------------------------
    shape = property(lambda self: self._data.shape)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    dtype = property(lambda self: self._data.dtype)
    itemsize = property(lambda self: self._data.itemsize)
    nbytes = property(lambda self: self._data.nbytes)
    strides = property(lambda self: self._data.strides)
    flags = property(lambda self: self._data.flags)
    data = property(lambda self: _Pointer(ptr=self._data.__array_interface__["data"][0]))
    device = property(lambda self: Device())
    T = property(lambda self: ndarray(self._data.T))

    def __len__(self):
        return len(self._data)

    def __iter__(self):
        return (_wrap(row) for row in self._data)

    def __copy__(self):
        return ndarray(self._data.copy())

    def __deepcopy__(self, memo):
        return ndarray(self._data.copy())

    # --- indexing -------------------------------------------------------------------
    def __getitem__(self, index):
        return _wrap(self._data[_unwrap_index(index)])

    def __setitem__(self, index, value):
        if isinstance(value, (list, tuple)):
            value = np.asarray(value)  # host data, refused below unless it is a single number
        if isinstance(value, np.ndarray):
            if value.ndim > 0:
                raise TypeError(
                    "assigning host data (a NumPy array or a list) into a device array: move it first with xp.asarray(...) "
                    "(CuPy refuses it: non-scalar numpy.ndarray cannot be used for fill)"
                )
            value = value[()]  # a 0-d host array is a scalar, as for CuPy's fill
        self._data[_unwrap_index(index)] = _unwrap(value, "assignment")

    # --- methods, computed on the device --------------------------------------------
    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        return ndarray(self._data.astype(dtype, order=order, copy=copy))

    def copy(self, order="C"):
        return ndarray(self._data.copy(order=order))

    def fill(self, value):
        if isinstance(value, np.ndarray) and value.ndim > 0:
            raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
        self._data.fill(value)

    def __getattr__(self, name):
        if name in _METHODS:
            method = getattr(self._data, name)

            def call(*args, **kwargs):
                return _wrap(method(*_unwrap(args, f"ndarray.{name}"), **_unwrap_kwargs(kwargs, f"ndarray.{name}")))

            call.__name__ = name
            return call
        raise AttributeError(f"the strict CuPy stand-in's ndarray has no attribute {name!r}")


_METHODS = {
    "all", "any", "argmax", "argmin", "argsort", "clip", "conj", "cumprod", "cumsum", "diagonal", "dot",
    "flatten", "max", "mean", "min", "nonzero", "prod", "ravel", "repeat", "reshape", "round", "sort", "squeeze",
    "std", "sum", "swapaxes", "take", "trace", "transpose", "var", "view",
}

for _name in (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift", "rshift",
):
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__"))
    setattr(ndarray, f"__r{_name}__", _binary(f"__r{_name}__"))
    setattr(ndarray, f"__i{_name}__", _binary(f"__i{_name}__", inplace=True))
for _name in ("lt", "le", "eq", "ne", "gt", "ge"):
    setattr(ndarray, f"__{_name}__", _binary(f"__{_name}__"))
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", _unary(f"__{_name}__"))


def _unwrap_kwargs(kwargs, what):
    return {k: _unwrap(v, what) for k, v in kwargs.items()}


# ----------------------------------------------------------------------------------------
# the module's functions: the subset of NumPy's that CuPy provides


def _device_function(np_func, name):
    def call(*args, **kwargs):
        out = kwargs.get("out")
        result = np_func(*_unwrap(args, f"{__name__}.{name}"), **_unwrap_kwargs(kwargs, f"{__name__}.{name}"))
        if isinstance(out, ndarray) and result is out._data:
            return out
        return _wrap(result)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"CuPy's {name}, simulated with numpy.{name} on the device arrays' data."
    return call


class ufunc:
    """A CuPy ufunc: callable, with ``at``, ``reduce``, ``accumulate`` and ``outer``."""

    def __init__(self, np_ufunc):
        self._ufunc = np_ufunc
        self.__name__ = np_ufunc.__name__
        self.nin, self.nout = np_ufunc.nin, np_ufunc.nout
        self._call = _device_function(np_ufunc, self.__name__)
        for method in ("reduce", "accumulate", "outer"):
            setattr(self, method, _device_function(getattr(np_ufunc, method), f"{self.__name__}.{method}"))

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def at(self, a, indices, b=None):
        """In place: ``a[indices] op= b`` with repeated indices applied each time (``cupyx.scatter_add``)."""
        if not isinstance(a, ndarray):
            raise TypeError(f"{self.__name__}.at needs a device array to update, got {type(a).__name__}")
        args = (_unwrap_index(indices),) + (() if b is None else (_unwrap(b, f"{self.__name__}.at"),))
        self._ufunc.at(a._data, *args)


_UFUNCS = (
    "absolute add arccos arccosh arcsin arcsinh arctan arctan2 arctanh bitwise_and bitwise_or bitwise_xor cbrt ceil "
    "copysign cos cosh deg2rad divide equal exp exp2 expm1 floor floor_divide fmax fmin fmod greater greater_equal "
    "hypot invert isfinite isinf isnan left_shift less less_equal log log10 log1p log2 logaddexp logaddexp2 "
    "logical_and logical_not logical_or logical_xor maximum minimum mod multiply negative nextafter not_equal power "
    "rad2deg reciprocal remainder right_shift rint sign signbit sin sinh sqrt square subtract tan tanh true_divide trunc"
).split()

_FUNCTIONS = (
    # creation (from existing device data; host data goes through asarray / array)
    "arange empty empty_like eye full full_like identity linspace logspace meshgrid ones ones_like tri tril triu "
    "zeros zeros_like diag diagflat copy "
    # manipulation
    "atleast_1d atleast_2d atleast_3d broadcast_arrays broadcast_to concatenate expand_dims flip fliplr flipud "
    "hstack moveaxis ravel repeat reshape roll split array_split squeeze stack swapaxes tile transpose vstack "
    # math, reductions, statistics, sorting, searching
    "abs all allclose amax amin any argmax argmin argsort argwhere array_equal average bincount clip count_nonzero "
    "cumprod cumsum diff dot einsum inner isclose kron matmul max mean min nonzero outer prod ptp searchsorted sort "
    "std sum take take_along_axis tensordot trace unique var vdot where"
).split()

_LINALG = "cholesky det eigh eigvalsh inv lstsq matrix_rank norm pinv qr slogdet solve svd".split()

_module = sys.modules[__name__]
for _name in _UFUNCS:
    setattr(_module, _name, ufunc(getattr(np, _name)))
for _name in _FUNCTIONS:
    setattr(_module, _name, _device_function(getattr(np, _name), _name))
linalg = SimpleNamespace(**{n: _device_function(getattr(np.linalg, n), f"linalg.{n}") for n in _LINALG})
cuda = SimpleNamespace(Device=Device, is_available=lambda: True)


def __getattr__(name):
    raise AttributeError(
        f"the strict CuPy stand-in has no {name!r}: CuPy has no such function in its main namespace, or the "
        f"stand-in does not simulate it (if CuPy has it, add it to _FUNCTIONS in {__name__})"
    )


def asarray(a, dtype=None, order=None):
    """Onto the device: a device array is returned as it is (or cast); host data is copied over (a transfer)."""
    if isinstance(a, ndarray):
        return a if dtype is None or np.dtype(dtype) == a.dtype else a.astype(dtype)
    host = np.array(a, dtype=dtype, copy=True)  # the device has memory of its own: always a copy
    _record("host->device", host.nbytes)
    return ndarray(host)


def array(obj, dtype=None, copy=True, order="K", ndmin=0):
    """Like ``asarray``, but copies a device array too unless ``copy=False``."""
    if isinstance(obj, ndarray):
        out = obj.astype(dtype or obj.dtype, copy=copy)
    else:
        out = asarray(obj, dtype)
    return out if out.ndim >= ndmin else ndarray(out._data.reshape((1,) * (ndmin - out.ndim) + out.shape))


ascontiguousarray = asarray


def asnumpy(a, stream=None, order="C", out=None):
    """To the host: a NumPy array (a transfer for a device array; NumPy input is returned as NumPy)."""
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


def get_array_module(*args):
    """This module if any argument is one of its arrays, else ``numpy`` (``cupy.get_array_module``)."""
    return _module if builtins.any(isinstance(a, ndarray) for a in args) else np  # (any, all, max... are CuPy's here)


def is_available() -> bool:
    """The simulated device is always there (it is the host)."""
    return True


def result_type(*arrays_and_dtypes):
    return np.result_type(*(a.dtype if isinstance(a, ndarray) else a for a in arrays_and_dtypes))


def can_cast(from_, to, casting="safe"):
    return np.can_cast(from_.dtype if isinstance(from_, ndarray) else from_, to, casting=casting)
