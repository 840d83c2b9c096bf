"""Community extensions: folders under extensions/ (and pip packages through an entry-point group),
each reaching one ``setup(api)`` call with a versioned facade (``webui.extensions.api``).

- manifest.py   extension.toml -> Manifest (pure)
- api.py        the facade extensions import: hooks, scripts, UI sections/tabs, routes, settings
- hooks.py      calling extension hooks in isolation (errors and hangs switch the extension off)
- loader.py     discovery, isolated imports, the start-up table
- admin.py      install from git, update, uninstall, install requirements (refused on a LAN by default)
- store.py      which extensions are disabled, and extension setting values (one JSON file)
"""
