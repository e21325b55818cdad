"""End-to-end tests of fcgibridge (a package so that its conftest.py does not shadow
another test directory's conftest module in the same pytest run)."""
