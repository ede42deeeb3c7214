"""The `--notebooks` option: the suite alone takes about 2 minutes on 2 cores; rerunning the six
tutorials that train models adds about 13 more, so they run when asked (and always in CI)."""


def pytest_addoption(parser):
    parser.addoption("--notebooks", action="store_true",
                     help="also rerun the tutorials that train models "
                          "(about 13 minutes on 2 cores)")
