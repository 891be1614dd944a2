"""A stateful, in-memory stand-in for the parts of Stripe's API that collab-billing uses.

Public interface:
- `stripe_emulator.app.create_app(api_key=None)`: the ASGI (Starlette) app; its store is
  `app.state.emulator`.
- `stripe_emulator.server.serve(host, port, api_key)` (blocking) and
  `stripe_emulator.server.start_in_thread(host, port=0, api_key)` -> `RunningEmulator`
  (`.url`, `.port`, `.app`, `.stop()`, context manager).
- `stripe_emulator.testing.stripe_client(url)`: an SDK client pointed at an emulator.
- `python -m stripe_emulator --host 127.0.0.1 --port 12111`.

Control routes (JSON, no API key) live under `/_emulator/`; see `control.py`.
"""

from stripe_emulator.objects import API_VERSION

__all__ = ["API_VERSION"]
