"""Packaging for depthprune_nb; every fact comes from settings.ini (nbdev 2 layout)."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

licenses = {"apache2": ("Apache Software License 2.0", "OSI Approved :: Apache Software License")}
statuses = ["Planning", "Pre-Alpha", "Alpha", "Beta", "Production/Stable", "Mature", "Inactive"]
lic = licenses[cfg["license"]]
requirements = cfg.get("requirements", "").split()
eval_requirements = cfg.get("eval_requirements", "").split()  # task accuracy (depthprune_nb.eval.tasks)
humaneval_requirements = cfg.get("humaneval_requirements", "").split()  # HumanEval from its own package (a copy ships anyway)
dev_requirements = cfg.get("dev_requirements", "").split() + eval_requirements
min_python = cfg["min_python"]

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license=lic[0],
    url=cfg["git_url"],
    keywords=cfg["keywords"].split(),
    classifiers=[
        "Development Status :: " + cfg["status"] + " - " + statuses[int(cfg["status"])],
        "Intended Audience :: " + cfg["audience"].title(),
        "License :: " + lic[1],
        "Natural Language :: " + cfg["language"].title(),
        "Programming Language :: Python :: 3",
    ],
    packages=setuptools.find_packages(include=[cfg["lib_path"], cfg["lib_path"] + ".*"]),
    include_package_data=True,
    # data shipped with the package, each set with its licence beside it (depthprune_nb/assets/README.md)
    package_data={cfg["lib_path"]: ["assets/*.md", "assets/*/*", "assets/*/*/*"]},
    install_requires=requirements,
    extras_require={"eval": eval_requirements, "humaneval": humaneval_requirements, "dev": dev_requirements},
    python_requires=">=" + min_python,
    zip_safe=False,
    entry_points={
        "console_scripts": cfg["console_scripts"].split(),
        "nbdev": [f"{cfg['lib_path']}={cfg['lib_path']}._modidx:d"],
    },
)
