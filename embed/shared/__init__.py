"""Helpers all three packages share (cellembed, cellclf, cellreports), one job each:

- :mod:`~cellembed.shared.atomic`: atomic writes, output locks, output checks, folder installs;
- :mod:`~cellembed.shared.cache`: the cache folder (``$CELLEMBED_CACHE_DIR``);
- :mod:`~cellembed.shared.cli_support`: command-line options, exit codes, one-line errors;
- :mod:`~cellembed.shared.csv_cells`: CSV cells safe from spreadsheet formula injection;
- :mod:`~cellembed.shared.hashing`: SHA-256 of files;
- :mod:`~cellembed.shared.plotting`: matplotlib set up for files (no display);
- :mod:`~cellembed.shared.quiet`: native libraries' start-up chatter silenced;
- :mod:`~cellembed.shared.versions`: installed library versions, for provenance.

(The exceptions are public names of :mod:`cellembed.errors`.)
"""
