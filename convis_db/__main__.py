"""`python -m convis_db ...` runs the convis-db command line."""

from convis_db.cli import main

if __name__ == "__main__":
    main()
