"""Adult-sized abdominal anatomy for :mod:`monai_xres.sample_data` (generator version 3).

Everything is drawn per seed in the patient frame, in millimetres (RAS: +x right, +y anterior, +z superior;
x = 0 on the midline, y = 0 half-way through the trunk, z = 0 near the renal hila, about L1-L2), then
painted on any grid by :mod:`monai_xres.sample_data.render`. Sizes and positions follow textbook adult values
(trunk 28-40 x 19-29 cm; spleen 9-13 cm long, 100-400 mL, under the left hemidiaphragm against ribs 9-11;
liver 1.2-2.2 L; kidneys 10-12.5 cm, the left higher; vertebrae 4-5 cm wide). Hounsfield units are drawn
per contrast phase (non-contrast, arterial, portal venous) from published ranges, plus a per-scan calibration
offset.
Labels never depend on the random textures, so a seed gives the same organs on every grid.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

PHASES = ("non-contrast", "arterial", "portal venous")
Box = Callable[[Sequence[float], Sequence[float]], tuple]  # patient-frame corners -> index slices of the grid


def rotation(degrees: Sequence[float]) -> np.ndarray:
    """Rotation matrix about x, then y, then z (degrees)."""
    ax, ay, az = np.deg2rad(np.asarray(degrees, dtype=float))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _warp(rng: np.random.Generator, amplitude_mm: float) -> Callable[[np.ndarray], np.ndarray]:
    """A smooth random displacement (three plane waves, 30-80 mm wavelength): organ shapes vary per seed."""
    dirs = rng.normal(size=(3, 3))
    k = dirs / np.linalg.norm(dirs, axis=1, keepdims=True) * (2 * np.pi / rng.uniform(30, 80, size=3))[:, None]
    phases, amps = rng.uniform(0, 2 * np.pi, size=3), rng.normal(size=(3, 3)) * amplitude_mm / np.sqrt(3)
    return lambda p: p + (np.sin(p @ k.T + phases) @ amps).astype(p.dtype)


def ell(p: np.ndarray, c: Sequence[float], semi: Sequence[float], rot: np.ndarray | None = None) -> np.ndarray:
    """Normalised squared radius of the points ``p`` (..., 3) in an ellipsoid (<= 1 inside)."""
    q = p - np.asarray(c, dtype=p.dtype)
    if rot is not None:
        q = q @ rot.astype(p.dtype)  # columns of rot are the ellipsoid's axes
    return ((q / np.asarray(semi, dtype=p.dtype)) ** 2).sum(-1)


def tube(p: np.ndarray, points: Sequence[Sequence[float]], radii: Sequence[float]) -> np.ndarray:
    """Distance to a polyline divided by its (linearly interpolated) radius: < 1 inside the tube."""
    pts, rad = np.asarray(points, dtype=p.dtype), np.asarray(radii, dtype=p.dtype)
    best = np.full(p.shape[:-1], np.inf, dtype=p.dtype)
    for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
        ab = b - a
        t = np.clip((p - a) @ ab / (ab @ ab), 0, 1)
        d = np.linalg.norm(p - a - t[..., None] * ab, axis=-1) / (ra + t * (rb - ra))
        np.minimum(best, d, out=best)
    return best


def outline_radius(b: dict, psi: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Radius (mm) of the skin along the direction ``psi`` (radians, 0 = patient right, pi/2 = anterior)."""
    s = 1 + b["taper"] * z / 100
    ay = np.where(np.sin(psi) >= 0, b["ay_a"], b["ay_p"])
    f = (np.abs(np.cos(psi) / (b["ax"] * s)) ** b["n"] + np.abs(np.sin(psi) / (ay * s)) ** b["n"]) ** (1 / b["n"])
    return 1 / f


def wall_depth(b: dict, psi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth below the skin (mm) of the inner edges of the subcutaneous fat and of the muscle wall."""
    fat = np.maximum(b["sc"] * (1 + b["sc_front"] * np.sin(psi) + b["sc_flank"] * np.cos(2 * psi)), 3)
    return fat, fat + b["wall"]


def diaphragm_z(d: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Height of the diaphragm (mm): two domes, lower towards the chest wall, never below the recesses."""
    domes = []
    for side in ("left", "right"):
        dx, dy, z0, k = d[side]
        yy = (y - dy) * np.where(y > dy, 0.75, 1.0)  # the anterior recesses are shallower
        domes.append(z0 - k * ((x - dx) ** 2 + yy ** 2))
    return np.maximum(np.maximum(*domes), d["floor"])


def recess(d: dict, z: np.ndarray, psi: np.ndarray) -> np.ndarray:
    """Thickness (mm) of the lung's costophrenic recess inside the chest wall, deepest behind."""
    front = (1 + np.sin(psi)) / 2  # 0 behind, 1 in front: the recess is lowest behind, highest in front
    return np.clip((z - d["floor"] - front * d["climb"]) * d["slope"] * (1 - 0.6 * front), 0, 40)


def draw(rng: np.random.Generator) -> dict:
    """Per-seed sizes, positions, shapes and Hounsfield units, in the patient frame (mm, degrees, HU)."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    a: dict = {}
    ax = u(140, 200)
    depth = 2 * ax / u(1.2, 1.55)  # the trunk is wider than deep
    ay_p = depth * u(0.45, 0.52)
    b = a["body"] = {"ax": ax, "ay_p": ay_p, "ay_a": depth - ay_p, "n": u(2.0, 2.7),
                     "taper": u(-0.03, 0.05), "sc": float(np.clip(np.exp(rng.normal(np.log(16), 0.5)), 4, 50)),
                     "sc_front": u(-0.1, 0.4), "sc_flank": u(-0.25, 0.25), "wall": u(9, 15)}
    post_fat = wall_depth(b, np.array(-np.pi / 2))[0]
    ys, rx, ry = -ay_p + float(post_fat) + u(55, 75), u(19, 25), u(14, 18)
    a["spine"] = {"y": ys, "rx": rx, "ry": ry, "period": u(28, 36), "phase": u(0, 36), "disc": u(6, 10),
                  "para": (u(22, 32), ys - ry - u(25, 35), u(20, 30), u(18, 26)), "psoas": (u(30, 40), ys + u(0, 12)),
                  "psoas_k": (u(0.2, 0.35), u(18, 28)), "quad": (u(55, 75), ys - u(5, 20), u(15, 25), u(8, 12))}
    zk = u(0, 20)  # left kidney centre; the right one lies 0.5-2.5 cm lower
    kid = a["kidneys"] = {"semi": (u(24, 31), u(18, 24), u(50, 62)), "tilt": (u(5, 25), u(8, 20), u(20, 45)),
                          "left": (-u(52, 70), ys + u(-5, 15), zk), "right": (u(55, 75), ys + u(-5, 15), zk - u(5, 25)),
                          "warps": [_warp(rng, 2.0), _warp(rng, 2.0)],
                          "fat": 1 + float(np.clip(b["sc"] / 60, 0.06, 0.4)) * np.array([u(0.8, 1.2), 1.0, 0.6])}
    # spleen: against the posterolateral wall above and lateral to the left kidney, long axis along the 10th
    # rib (upper pole posterior), convex side following the wall; the diaphragm dome lies just above it
    sc = float(np.exp(rng.normal(0.06, 0.14)))  # volume (with the lobe below): median ~180 mL, 10-90%: 90-390 mL
    semi = np.array([u(52, 66), u(32, 42), u(19, 26)]) * sc
    alpha, beta = np.deg2rad(u(50, 92)), np.deg2rad(u(45, 75))  # from lateral to posterolateral
    radial = np.array([-np.sin(alpha), -np.cos(alpha), 0.0])
    tangent = np.array([-np.cos(alpha), np.sin(alpha), 0.0])
    e_u = np.cos(beta) * tangent - np.sin(beta) * np.array([0, 0, 1.0])
    e_w = -radial
    rot = np.stack([e_u, np.cross(e_w, e_u), e_w], 1) @ rotation((u(-15, 15), 0, 0))  # roll about the long axis
    zc = zk + u(35, 75)
    psi = np.arctan2(radial[1], radial[0])
    r_cav = float(outline_radius(b, np.array(psi), np.array(zc)) - wall_depth(b, np.array(psi))[1])
    slope, floor = u(0.25, 0.6), zk + u(15, 45)
    climb = u(50, 100)
    rec = float(recess({"floor": floor, "slope": slope, "climb": climb}, np.array(zc), np.array(psi)))
    xy = radial[:2] * (r_cav - rec - semi[2] - u(2, 6))
    a["spleen"] = {"c": (xy[0], xy[1], zc), "semi": tuple(semi), "rot": rot,
                   "bend": u(70, 220), "warp": _warp(rng, u(2, 4.5)),  # bend: from a crescent to nearly straight
                   "notches": [(u(-0.8, 0.8), u(0.6, 1.0), u(6, 12)) for _ in range(int(rng.integers(0, 4)))],
                   # in one case in two the upper pole wraps medially (behind the stomach): a second lobe there
                   "lobe": (bool(rng.random() < 0.5), (-u(0.4, 0.8), u(-0.5, 0.5), u(0.3, 0.8)),
                            (u(0.35, 0.55), u(0.5, 0.8), u(0.6, 0.9)))}
    top = zc + float(np.sqrt(((rot[2] * semi) ** 2).sum()))
    apex, k = np.array([-u(50, 80), u(-10, 25)]), u(70, 110) / 130 ** 2
    reach = max(np.linalg.norm(xy - apex), np.linalg.norm(xy - semi[0] * np.cos(beta) * tangent[:2] - apex))
    zl = max(zk + u(115, 155), top + u(3, 12) + k * reach ** 2)
    a["diaphragm"] = {"left": (apex[0], apex[1], zl, k),
                      "right": (u(50, 80), u(-10, 25), zl + u(5, 25), k * u(0.8, 1.2)),
                      "floor": floor, "slope": slope, "climb": climb, "t": u(3, 6)}
    a["ribs"] = {"z12": zk + u(30, 55), "pitch": u(22, 30), "drop": u(160, 220), "t": (u(3.5, 4.5), u(4, 6))}
    sp_c, sp_low = np.asarray(a["spleen"]["c"]), np.asarray(a["spleen"]["c"]) + rot[:, 0] * semi[0]
    hilum = sp_c + e_w * (semi[2] + 8)
    a["liver"] = {"right": ((u(0.35, 0.55) * b["ax"], u(-0.1, 0.25) * ay_p, zl + u(5, 25) - u(55, 85)),
                            (u(0.42, 0.55) * b["ax"], u(0.6, 0.78) * ay_p, u(62, 82)),
                            rotation((u(-10, 10), 0, u(-15, 15)))),
                  "left": ((-u(0.0, 0.3) * b["ax"], u(0.35, 0.55) * b["ay_a"], zl - u(30, 55)),
                           (u(35, 70), u(22, 38), u(28, 40)), rotation((0, 0, u(-25, 5)))),
                  "warp": _warp(rng, u(3, 6)),
                  "gall": (u(0.25, 0.45) * b["ax"], u(0.3, 0.6) * b["ay_a"], zk + u(-10, 40), u(10, 18), u(25, 45),
                           bool(rng.random() < 0.85))}
    fx, fy, fz = -u(35, 60), ys + u(40, 60), zl - u(25, 45)
    d = u(0.7, 1.25)
    bx, by, bz = -u(45, 75), u(0.0, 0.35) * b["ay_a"], fz - u(40, 60)
    nx, ny, nz = u(-15, 10), u(0.35, 0.6) * b["ay_a"], bz - u(20, 40)
    a["stomach"] = {"pts": [(fx, fy, fz), (bx, by, bz), (nx, ny, nz),
                            (u(20, 40), u(0.2, 0.4) * b["ay_a"], nz + u(-5, 15)),
                            (u(40, 55), ys + u(45, 60), nz - u(40, 70))],
                    "r": [u(25, 45) * d, u(22, 38) * d, u(15, 22) * d, u(10, 14), u(10, 14)], "wall": u(3, 6),
                    "gas": u(0, 35), "contrast": bool(rng.random() < 0.08)}
    zt = zk + u(-40, 20)
    ax_c = b["ax"] - b["sc"] - b["wall"]
    a["colon"] = {"pts": [(u(50, 80), u(-10, 20), zk - u(150, 200)),  # caecum, ascending, hepatic flexure
                          (ax_c * u(0.55, 0.75), ys + u(15, 35), zk - u(40, 80)),
                          (ax_c * u(0.45, 0.65), u(0.1, 0.3) * b["ay_a"], zk + u(-5, 25)),
                          (u(-20, 20), b["ay_a"] * u(0.5, 0.7), zt),  # transverse, splenic flexure by the spleen
                          (-ax_c * u(0.6, 0.8), ys + u(45, 75), sp_low[2] + u(-20, 20)),
                          (-ax_c * u(0.6, 0.8), ys + u(10, 30), zk - u(50, 90)),  # descending, sigmoid
                          (u(-60, -20), u(-10, 20), zk - u(180, 230))],
                  "r": [u(20, 30), u(16, 26), u(16, 26), u(16, 26), u(16, 26), u(14, 22), u(12, 18)],
                  "gas": u(-0.8, 1.0)}
    a["bowel"] = {"top": zk + u(10, 50), "r": u(0.7, 1.3), "gas": u(1.4, 2.6)}
    pb = (-u(10, 30), ys + u(45, 65), zk + u(10, 30))
    ph = (u(20, 40), ys + u(40, 60), pb[2] - u(10, 30))
    a["pancreas"] = {"pts": [tuple(hilum + (0, 0, -10)), pb, ph], "r": [u(9, 13), u(10, 14), u(14, 20)],
                     "fat": u(-1.0, 0.3)}  # tail at the splenic hilum, body, head
    ao_x, ivc_x = -u(10, 25), u(15, 30)
    a["vessels"] = {
        "aorta": ([(ao_x, ys + ry + 12, zk - 400), (ao_x, ys + ry + u(10, 16), zk),
                   (-u(20, 35), ys + ry * 0.5 + 10, zl + 60), (-u(20, 35), ys + ry * 0.5 + 12, zl + 400)],
                  u(9, 13), bool(rng.random() < 0.4)),
        "ivc": [(ivc_x, ys + ry + u(5, 15), zk - 400), (ivc_x, ys + ry + u(5, 15), kid["right"][2] + 40),
                (ivc_x, ys + ry + u(20, 35), zl - 10), (u(0, 20), u(0, 30), zl + 60)],
        "ivc_r": u(9, 13),
        "portal": [(u(0, 15), ys + u(50, 70), ph[2] + u(5, 15)), (u(35, 55), ys + u(55, 75), ph[2] + u(40, 60)),
                   (u(80, 100), ys + u(45, 65), ph[2] + u(60, 80))],
        "portal_r": u(6, 9), "hepatic": [(u(60, 110), u(-20, 40), zl - u(20, 50)) for _ in range(3)],
    }
    a["heart"] = ((-u(10, 35), u(0.25, 0.5) * b["ay_a"], zl + u(30, 60)), (u(55, 75), u(45, 60), u(50, 65)))
    a["table"] = (bool(rng.random() < 0.6), -ay_p - u(3, 30), u(150, 450))
    a["hu"], a["phase"] = _hounsfield(rng)
    return a


def _hounsfield(rng: np.random.Generator) -> tuple[dict, str]:
    """Tissue Hounsfield units of one scan: non-contrast values, plus the enhancement of its phase."""
    u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
    h = {"fat": u(-120, -85), "muscle": u(15, 55), "blood": u(35, 52), "spleen": u(32, 55), "kidney_c": u(18, 40),
         "pancreas": u(28, 50), "bowel": u(20, 45), "lung": u(-900, -800), "bone": u(450, 950), "marrow": u(90, 220),
         "cartilage": u(70, 160), "bile": u(0, 20), "urine": u(0, 15), "disc": u(65, 110), "csf": u(5, 25),
         "fluid": u(0, 25), "offset": u(-15, 10)}
    fatty, normal = u(-30, -5), u(-2, 20)  # the liver is brighter than the spleen, unless fatty (1 in 4)
    h["liver"] = float(np.clip(h["spleen"] + (fatty if rng.random() < 0.25 else normal), 10, 75))
    h["kidney_m"] = h["kidney_c"] - u(0, 8)
    names = ("aorta", "vein", "portal", "spleen", "liver", "kidney_c", "kidney_m", "pancreas", "muscle", "bowel")
    arterial = dict(zip(names, (u(180, 330), u(30, 90), u(60, 140), u(35, 90), u(10, 30), u(100, 180), u(15, 60),
                                u(50, 100), u(3, 12), u(25, 70))))
    portal = dict(zip(names, (u(90, 160), u(80, 140), u(100, 170), u(55, 95), u(40, 75), u(100, 170), u(70, 140),
                              u(40, 75), u(6, 18), u(25, 60))))
    phase = int(rng.choice(3, p=(0.5, 0.2, 0.3)))  # non-contrast scans are common in practice
    enh = ({}, arterial, portal)[phase]
    for k in ("aorta", "vein", "portal"):
        h[k] = h["blood"] + enh.get(k, 0.0)
    for k in ("spleen", "liver", "kidney_c", "kidney_m", "pancreas", "muscle", "bowel"):
        h[k] += enh.get(k, 0.0)
    h["spleen_mottle"] = u(10, 35) if phase == 1 else u(0, 4)  # arciform enhancement in the arterial phase
    h["noise_sd"] = float(np.exp(rng.uniform(np.log(5), np.log(28))))
    h["psf_mm"], h["noise_corr"] = u(0.6, 3.0), u(0.35, 1.0)
    return h, PHASES[phase]
