"""The local web app over an atlas (``kneuron serve``)."""
