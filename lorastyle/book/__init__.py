"""What the book's chapters call: one function per table or figure, and one look for every figure.

* :mod:`~lorastyle.book.experiments`: tables and arrays computed from a built collection;
* :mod:`~lorastyle.book.viz`: the figures (matplotlib, plotly), in one consistent style;
* :mod:`~lorastyle.book.figures`: the collection's own figures (sample grids, loss curves).

The pipeline never imports this package; chapters import only this package and the core.
"""
