"""NumPy vs torch parity tests (a package so the test modules can share helpers from conftest)."""
