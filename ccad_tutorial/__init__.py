"""ccad_tutorial: the code of an executable textbook on CCAD.

CCAD ("Compressed Global Feature Conditioned Anomaly Detection", arXiv 2512.21459) conditions a
Stable-Diffusion-style UNet on a compressed bank of normal features so that it repaints an input
image as a normal one; the difference between input and reconstruction is the anomaly map.

Data flows one way through the modules, in the order the book teaches them::

    minitex / datasets  ->  features  ->  coreset / bank (CFB)  ->  fcm (FCM)
        ->  gcb / model (GCB)  ->  train  ->  ddim  ->  scoring  ->  metrics

One image goes from disk to metric through ``datasets.load_split``, a detector
(``detectors``: ``fit`` on the normals, ``predict`` -> scores, maps) and
``evaluation.evaluate``; everything written goes through ``runs``.

Import the submodule you need (``from ccad_tutorial import coreset``); nothing heavy is
imported by the package itself, so ``import ccad_tutorial`` is instant.
"""

__version__ = "0.1.0"
