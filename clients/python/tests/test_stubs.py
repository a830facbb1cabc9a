"""The committed stubs are what grpcio-tools generates from proto/ today."""

import importlib.util
import pathlib
import unittest

# Loaded from its file, so that clients/python/ does not go on sys.path (the tests use
# the installed package, not the source tree).
_path = pathlib.Path(__file__).resolve().parent.parent / "generate_stubs.py"
_spec = importlib.util.spec_from_file_location("generate_stubs", _path)
generate_stubs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate_stubs)


class StubsTest(unittest.TestCase):
    def test_the_committed_stubs_are_up_to_date(self):
        stale = generate_stubs.differences()
        self.assertEqual(
            stale,
            [],
            "regenerate them: python clients/python/generate_stubs.py",
        )


if __name__ == "__main__":
    unittest.main()
