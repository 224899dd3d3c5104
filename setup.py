"""Packaging for minireactor + proxy."""

from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="minireactor-proxy",
    version="0.1.0",
    description="A forward HTTP/HTTPS proxy on a hand-written reactor, built to be read.",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["minireactor", "minireactor.*", "proxy", "proxy.*"]),
    install_requires=["watchdog>=4"],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "hypothesis>=6",
            "trustme>=1.1",
            "ruff>=0.6",
            "mypy>=1.10",
            "docutils>=0.18",  # the docstring tests parse reST the way Sphinx will
            "prometheus-client>=0.17",  # its parser reads /metrics back in the tests
        ],
        "docs": ["sphinx>=7", "myst-nb>=1.1", "matplotlib>=3.8"],
        # nbclient and nbformat: notebooks/grade.py executes notebooks and reads their cells.
        "notebooks": [
            "nbmake>=1.5",
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel",
            "matplotlib>=3.8",
            "trustme>=1.1",
        ],
        "bench": ["matplotlib>=3.8"],
    },
    entry_points={"console_scripts": ["proxy=proxy.__main__:main"]},
)
