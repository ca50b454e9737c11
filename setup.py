"""Only what pyproject.toml cannot say: the start-up hook file `s3prl_star_autoload.pth` (s3prl_star.autoload),
written to the top of the wheel so that it lands in site-packages beside the package."""
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH_FILE = "s3prl_star_autoload.pth"
PTH_LINE = "import s3prl_star.autoload; s3prl_star.autoload.install()\n"


class BuildPyWithStartupHook(build_py):
    def run(self):
        super().run()
        Path(self.build_lib, PTH_FILE).write_text(PTH_LINE)

    def get_outputs(self, include_bytecode=1):
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, PTH_FILE))]


setup(cmdclass={"build_py": BuildPyWithStartupHook})
