"""What several test files share: the in-process CLI driver, tiny data, runs and models, the lvis-api
reference and the engine stand-ins. Test files import from here, never from each other."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
