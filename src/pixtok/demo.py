"""`make demo`: the main job. Until the model lands this only proves the package imports."""

from __future__ import annotations


def main() -> None:
    import pixtok

    print(f"pixtok {pixtok.__version__} imports; the demo job arrives with the model.")


if __name__ == "__main__":
    main()
