"""`python -m services.ui`: serve the web UI (HTTP_PORT / UI_PORT, default 8000)."""

from __future__ import annotations

from services.ui.app import main

if __name__ == "__main__":
    main()
