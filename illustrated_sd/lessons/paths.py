"""The road a generation takes through latent space, and how straight it is.

Every sampler walks from the starting noise x_T to the final latent x₀ in a few dozen steps. How far it walks on the
way, against the straight line between the two ends, says how curved the road was: a curved road needs many small
steps to follow, a straight one can be jumped in a few (or one). Rectified flow trains for straight roads; ε-prediction
with DDIM walks a curved one. (Notebook 12 draws the roads of the embedded models side by side.)
"""

import numpy as np
import torch


def detour(latents: torch.Tensor) -> float:
    """How much longer the road ``latents [S + 1, ...]`` (the start, then the latent after each step) was than the
    straight line from its start to its end: Σ‖x_{k+1} − x_k‖ / ‖x_S − x_0‖. 1 is a straight road; 1.41 an L-shaped one."""
    x = torch.as_tensor(latents).flatten(1).double()
    if len(x) < 2:
        raise ValueError(f"a road needs at least a start and an end (got {len(x)} latent)")
    chord = (x[-1] - x[0]).norm()
    if chord == 0:
        raise ValueError("the road ends where it starts: its detour is undefined")
    return float((x[1:] - x[:-1]).norm(dim=1).sum() / chord)


def project_roads(roads: list[torch.Tensor]) -> list[np.ndarray]:
    """Several roads ``[S_i + 1, ...]`` (of the same latent shape) → each as ``[S_i + 1, 2]`` points in one plane: the
    two directions in which all their points spread most (a principal-component projection fitted to all of them
    together, so that roads from one start can be compared)."""
    flat = [torch.as_tensor(r).flatten(1).double() for r in roads]
    if len({f.shape[1] for f in flat}) != 1:
        raise ValueError(f"the roads' latents differ in size ({sorted({f.shape[1] for f in flat})} numbers): only roads "
                         "through the same latent space share a plane")
    points = torch.cat(flat)
    centre = points.mean(0)
    _, _, directions = torch.linalg.svd(points - centre, full_matrices=False)  # rows: the directions of most spread
    return [((f - centre) @ directions[:2].T).numpy() for f in flat]
