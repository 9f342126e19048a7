"""Helpers shared by the command-line tests."""


def error_line(capsys) -> str:
    """The one line ``zoo: error: ...`` a refused command printed to stderr."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("zoo: error: "), err
    return err[0]
