"""Verify certificates, compose the global bound, check it against the stitched model.

python certify.py [model=smollm2] [runs=DIR] [out=DIR]; exit 3 when a hash or claim does not
verify, exit 4 when a sound bound is below the observed deviation. See docs/certificate.md.
The entry point itself is blockcert.entry (also `blockcert-certify`).
"""

from blockcert.entry import certify_cli

if __name__ == "__main__":
    certify_cli()
