"""`tuneforge ui`: the dashboard. Launch, watch, compare, try and promote runs in a browser.

One concept a module: app.py builds the FastAPI app and serves it; security.py guards it (loopback,
token, request origin, body sizes, names that reach the filesystem); pages.py renders the HTML
pages (Jinja2 templates, autoescaped); runs_api.py, recipes_api.py and models_api.py the JSON and
server-sent-event endpoints the pages call (requests.py: what they share); views.py turns registry rows and run folders into what the pages show; live.py follows a
run's progress.jsonl; jobs.py is the launch queue (one `tuneforge` subprocess at a time);
drafts.py the recipes being edited (starting points, schema form, validation, uploads);
playground.py the tuned and base models side by side. Static assets (vendored htmx and uPlot)
are served from the package: nothing comes from a CDN.
"""
