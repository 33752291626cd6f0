"""The embedded collection: paintings, training sets, the tiny diffusion model, image encoders (the torch side).

Nothing in the numpy core imports this package. Modules, in the order the pipeline uses them:

* :mod:`~lorastyle.collection.profiles`: one configuration per scale (default, smoke, paper);
* :mod:`~lorastyle.collection.datasets`: Met paintings, the genre table, content photos, crops;
* :mod:`~lorastyle.collection.plan`: which LoRAs to train, on which images (the collection's rules);
* :mod:`~lorastyle.collection.diffusion`: the tiny SD-architecture model, LoRA training, sampling;
* :mod:`~lorastyle.collection.features`: image encoders with checked weights;
* :mod:`~lorastyle.collection.build`: the resumable pipeline behind ``make data``.
"""
