"""The hubguard Space's entry point: the app lives in the package (`hubguard.spaceapp`), so a Space built with
`hubguard space build` from an installed wheel runs the same code. Run locally: `python space/app.py`."""

from hubguard.spaceapp import launch

if __name__ == "__main__":
    launch()
