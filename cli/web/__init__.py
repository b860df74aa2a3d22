"""``lorareg ui``: a read-only web view of the registry (Starlette, Jinja2, server-side SVG).

Like the rest of ``cli/`` it is a presentation layer: it calls the ``Registry`` facade and
renders what comes back; no SQL, no torch.  ``app.create_app`` builds the ASGI app;
``gather`` reads what each page (and its JSON twin under ``/api/``) shows; ``words`` turns
recipes into sentences and commands; ``graph_svg`` and ``chart_svg`` lay out the lineage
graph and the metric charts that the templates draw."""
