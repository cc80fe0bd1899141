"""The package's face: every public name documented, the stubs and
``py.typed`` installed, the names following the Rust API."""

from __future__ import annotations

import inspect
from pathlib import Path

import messenger
from messenger import aio


def public(obj):
    return [n for n in dir(obj) if not n.startswith("_")]


def test_every_public_name_has_a_docstring():
    missing = []
    for module in (messenger, aio):
        assert (module.__doc__ or "").strip(), module
        for name in getattr(module, "__all__", public(module)):
            obj = getattr(module, name)
            if isinstance(obj, int):
                continue  # the callback-id constants (documented in the stubs)
            if not (inspect.getdoc(obj) or "").strip():
                missing.append(f"{module.__name__}.{name}")
            if inspect.isclass(obj):
                # What the package's own classes define (not what builtins
                # such as Exception give them).
                ours = [c for c in obj.__mro__ if c.__module__.startswith("messenger")]
                for attr in {a for c in ours for a in vars(c) if not a.startswith("_")}:
                    member = inspect.getattr_static(obj, attr)
                    if not (getattr(member, "__doc__", None) or "").strip():
                        missing.append(f"{module.__name__}.{name}.{attr}")
    assert not missing, missing


def test_stubs_and_py_typed_are_installed():
    here = Path(messenger.__file__).parent
    assert (here / "py.typed").exists()
    assert (here / "_messenger.pyi").exists()


def test_names_follow_the_rust_api():
    for cls in (messenger.Messenger, aio.Messenger):
        for name in [
            "listen_for_connection",
            "make_connection",
            "send_message",
            "send_confirmed",
            "request",
            "stats",
            "close",
            "identity",
        ]:
            assert hasattr(cls, name), (cls, name)
    assert (messenger.NOOP, messenger.ECHO, messenger.ACK, messenger.FIRST_USER) == (0, 1, 2, 4)
    for exc in ("Timeout", "Disconnected", "Refused", "Shutdown", "TooLarge"):
        assert issubclass(getattr(messenger, exc), messenger.MessengerError)
    assert issubclass(messenger.Timeout, TimeoutError)
    assert issubclass(messenger.InvalidArgument, ValueError)
