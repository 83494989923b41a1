"""Model specs: what the `model` config key names.

- ``<zoo name>`` (``resnet56``): a model of this package's registry (models.registry);
- ``timm:<name>`` (``timm:resnet18``): any timm model, randomly initialised (never pretrained),
  with the dataset's classes; a timm model with an ``img_size`` argument (ViTs and the like) is
  built for the run's image size, others take any input size as they are;
- ``<module>:<callable>`` (``mypkg.nets:build``): your own model, ``callable(num_classes=N)``
  returning an nn.Module, from a module on the paths you gave (PYTHONPATH, installed packages, a
  folder you put on sys.path). The entry Python adds implicitly for the current folder (``''``, or the
  folder of ``python -m``) is never searched: a grid or config read in some folder must not run the
  ``nets.py`` that happens to lie there (``PYTHONPATH=.`` says that you mean it).

`check_spec` refuses an unknown name with its closest matches (difflib), before anything is built.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable

from torch import nn

from models import registry

__all__ = ["check_spec", "create", "is_zoo"]


def is_zoo(spec: str) -> bool:
    """Whether `spec` names a zoo model (no ``:``)."""
    return ":" not in spec


def _close(name: str, known: Iterable[str]) -> str:
    matches = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(map(repr, matches))}?" if matches else ""


def _timm():
    try:
        import timm
    except ImportError:
        raise ValueError("timm models need the timm package: pip install timm") from None
    return timm


def _split(spec: str) -> tuple[str, str]:
    prefix, _, name = spec.partition(":")
    if not prefix or not name:
        raise ValueError(f"model spec {spec!r} is not <zoo name>, timm:<name> or <module>:<callable>")
    if prefix != "timm" and not (all(part.isidentifier() for part in prefix.split(".")) and name.isidentifier()):
        raise ValueError(f"model spec {spec!r} is not <module>:<callable> (a dotted module name, such as "
                         "mypkg.nets, and a function name)")
    return prefix, name


def user_paths() -> list[str]:
    """sys.path without the implicit current-folder entry ('' or the current folder itself), unless
    PYTHONPATH names the current folder."""
    given = {os.path.abspath(p) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p}
    here = os.getcwd()
    return [p for p in sys.path if here in given or (p != "" and os.path.abspath(p) != here)]


def _import_user_module(module_name: str):
    """Import `module_name`, its top-level package looked up on `user_paths` only (a module already
    imported is taken as it is)."""
    top = module_name.split(".")[0]
    if top not in sys.modules:
        found = importlib.machinery.PathFinder.find_spec(top, user_paths())
        if found is None:
            raise ModuleNotFoundError(f"no module named {top!r} on the paths given"
                                      " (the current folder is searched only when PYTHONPATH names it)")
        module = importlib.util.module_from_spec(found)
        sys.modules[top] = module
        try:
            found.loader.exec_module(module)
        except BaseException:
            del sys.modules[top]
            raise
    return importlib.import_module(module_name)


def _user_callable(spec: str) -> Callable[..., nn.Module]:
    module_name, attr = _split(spec)
    try:
        module = _import_user_module(module_name)
    except ImportError as err:
        raise ValueError(f"model {spec!r}: cannot import module {module_name!r} ({err}); "
                         "it must be on PYTHONPATH (e.g. PYTHONPATH=. for the current folder) or installed") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ValueError(f"model {spec!r}: module {module_name!r} has no callable {attr!r}{_close(attr, public)}")
    return fn


def check_spec(spec: str) -> None:
    """ValueError (one line, with close matches) unless `spec` names a model that can be built."""
    if is_zoo(spec):
        if spec not in registry.list_models():
            raise ValueError(f"unknown model {spec!r}{_close(spec, registry.list_models())} (zoo: "
                             f"{', '.join(registry.list_models())}; or timm:<name>, or <module>:<callable>)")
        return
    prefix, name = _split(spec)
    if prefix == "timm":
        timm = _timm()
        if not timm.is_model(name):
            raise ValueError(f"unknown timm model {name!r}{_close(name, timm.list_models())}")
        return
    _user_callable(spec)


def create(spec: str, num_classes: int = 10, image_size: int | None = None, **kw: object) -> nn.Module:
    """Build a freshly initialised model from a spec (see the module doc). `image_size` is used by
    timm models that take an ``img_size``; keyword options go to zoo factories and timm only."""
    if is_zoo(spec):
        return registry.create(spec, num_classes=num_classes, **kw)
    check_spec(spec)
    prefix, name = _split(spec)
    if prefix == "timm":
        timm = _timm()
        if image_size is not None:
            try:
                return timm.create_model(name, pretrained=False, num_classes=num_classes, img_size=image_size, **kw)
            except TypeError as err:  # a model without an img_size argument takes any input size
                if "img_size" not in str(err):
                    raise
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kw)
    if kw:
        raise TypeError(f"{spec}: options {sorted(kw)} go to zoo and timm models only")
    model = _user_callable(spec)(num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{spec}(num_classes={num_classes}) returned {type(model).__name__}, not an nn.Module")
    return model
