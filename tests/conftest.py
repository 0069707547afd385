"""The helper modules the tests share get pytest's assertion rewriting, as the test modules do: a failed ``assert``
in a helper shows its values, as it did when the helper was in a test module."""

import pytest

pytest.register_assert_rewrite("tests.fixtures")
