"""Only what pyproject.toml cannot say: the start-up hook file `s3prl_star_autoload.pth` (s3prl_star.autoload),
written to the top of the wheel, and of the editable wheel of `pip install -e .`, so that it lands in
site-packages beside the package."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_FILE = "s3prl_star_autoload.pth"
PTH_LINE = "import s3prl_star.autoload; s3prl_star.autoload.install()\n"


class BuildPyWithStartupHook(build_py):
    def run(self):
        super().run()
        Path(self.build_lib, PTH_FILE).write_text(PTH_LINE)

    def get_outputs(self, include_bytecode=1):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, PTH_FILE))]


class EditableWheelWithStartupHook(editable_wheel):
    """setuptools writes the editable wheel's own .pth files in `_install_namespaces` (setuptools >= 64);
    the hook file goes beside them."""

    def _install_namespaces(self, installation_dir, pth_prefix):
        super()._install_namespaces(installation_dir, pth_prefix)
        Path(installation_dir, PTH_FILE).write_text(PTH_LINE)


setup(cmdclass={"build_py": BuildPyWithStartupHook, "editable_wheel": EditableWheelWithStartupHook})
