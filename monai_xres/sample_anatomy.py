"""Adult-sized abdominal anatomy for :mod:`monai_xres.sample_data` (generator version 2).

Everything is drawn per seed in the patient frame, in millimetres (RAS: +x right, +y anterior, +z superior;
x = 0 on the midline, y = 0 half-way through the trunk, z = 0 near the renal hila, about L1-L2), then
painted on any grid. Sizes and positions follow textbook adult values (trunk 28-40 x 19-29 cm; spleen
9-13 cm long, 100-400 mL, under the left hemidiaphragm against ribs 9-11; liver 1.2-2.2 L; kidneys
10-12.5 cm, the left higher; vertebrae 4-5 cm wide). Hounsfield units are drawn per contrast phase
(non-contrast, arterial, portal venous) from published ranges, plus a per-scan calibration offset.
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
    return np.clip((z - d["floor"] - front * d["rise"]) * d["slope"] * (1 - 0.6 * front), 0, 40)


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
    sc = float(np.exp(rng.normal(0.0, 0.14)))  # volume: median ~200 mL, 10-90%: 120-310 mL
    semi = np.array([u(52, 66), u(32, 42), u(19, 26)]) * sc
    alpha, beta = np.deg2rad(u(60, 92)), np.deg2rad(u(45, 75))
    radial = np.array([-np.sin(alpha), -np.cos(alpha), 0.0])
    tangent = np.array([-np.cos(alpha), np.sin(alpha), 0.0])
    e_u = np.cos(beta) * tangent - np.sin(beta) * np.array([0, 0, 1.0])
    e_w = -radial
    rot = np.stack([e_u, np.cross(e_w, e_u), e_w], 1) @ rotation((u(-15, 15), 0, 0))  # roll about the long axis
    zc = zk + u(35, 75)
    psi = np.arctan2(radial[1], radial[0])
    r_cav = float(outline_radius(b, np.array(psi), np.array(zc)) - wall_depth(b, np.array(psi))[1])
    slope, floor = u(0.25, 0.6), zk + u(15, 45)
    rise = u(50, 100)
    rec = float(recess({"floor": floor, "slope": slope, "rise": rise}, np.array(zc), np.array(psi)))
    xy = radial[:2] * (r_cav - rec - semi[2] - u(2, 6))
    a["spleen"] = {"c": (xy[0], xy[1], zc), "semi": tuple(semi), "rot": rot,
                   "bend": u(120, 220), "warp": _warp(rng, u(2, 4.5)),
                   "notches": [(u(-0.8, 0.8), u(0.6, 1.0), u(6, 12)) for _ in range(int(rng.integers(0, 4)))]}
    top = zc + float(np.sqrt(((rot[2] * semi) ** 2).sum()))
    apex, k = np.array([-u(50, 80), u(-10, 25)]), u(70, 110) / 130 ** 2
    reach = max(np.linalg.norm(xy - apex), np.linalg.norm(xy - semi[0] * np.cos(beta) * tangent[:2] - apex))
    zl = max(zk + u(115, 155), top + u(3, 12) + k * reach ** 2)
    a["diaphragm"] = {"left": (apex[0], apex[1], zl, k),
                      "right": (u(50, 80), u(-10, 25), zl + u(5, 25), k * u(0.8, 1.2)),
                      "floor": floor, "slope": slope, "rise": rise, "t": u(3, 6)}
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
    h = {"fat": u(-120, -85), "muscle": u(15, 55), "blood": u(35, 52), "spleen": u(36, 55), "kidney_c": u(18, 40),
         "pancreas": u(28, 50), "bowel": u(20, 45), "lung": u(-900, -800), "bone": u(450, 950), "marrow": u(110, 280),
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
    phase = int(rng.choice(3, p=(0.35, 0.25, 0.40)))
    enh = ({}, arterial, portal)[phase]
    for k in ("aorta", "vein", "portal"):
        h[k] = h["blood"] + enh.get(k, 0.0)
    for k in ("spleen", "liver", "kidney_c", "kidney_m", "pancreas", "muscle", "bowel"):
        h[k] += enh.get(k, 0.0)
    h["spleen_mottle"] = u(10, 35) if phase == 1 else u(0, 4)  # arciform enhancement in the arterial phase
    h["noise_sd"] = float(np.exp(rng.uniform(np.log(5), np.log(28))))
    h["psf_mm"], h["noise_corr"] = u(0.6, 3.0), u(0.35, 1.0)
    return h, PHASES[phase]


class _Canvas:
    """The grid's patient coordinates, Hounsfield units and labels, painted structure by structure (later
    structures overwrite earlier ones, labels included)."""

    def __init__(self, p: np.ndarray, box: Box) -> None:
        self.p, self.box = p, box
        self.hu = np.full(p.shape[:-1], -1000.0, dtype=np.float32)
        self.lab = np.zeros(p.shape[:-1], dtype=np.uint8)

    def sphere(self, c: Sequence[float], r: float) -> tuple:
        return self.box(np.subtract(c, r), np.add(c, r))

    def tube(self, points: Sequence[Sequence[float]], radii: Sequence[float], reach: float = 1.5) -> tuple:
        """``(slices, d)``: the polyline's box and :func:`tube` in it (computed near each segment only)."""
        pts, rad = np.asarray(points, dtype=float), np.asarray(radii, dtype=float)
        sl = self.box(pts.min(0) - rad.max() * reach, pts.max(0) + rad.max() * reach)
        P = self.p[sl]
        d = np.full(P.shape[:-1], np.inf, dtype=P.dtype)
        for a, b, ra, rb in zip(pts[:-1], pts[1:], rad[:-1], rad[1:]):
            r = max(ra, rb) * reach
            seg = self.box(np.minimum(a, b) - r, np.maximum(a, b) + r)
            rel = tuple(slice(min(max(s.start - o.start, 0), o.stop - o.start), max(min(s.stop, o.stop) - o.start, 0))
                        for s, o in zip(seg, sl))
            np.minimum(d[rel], tube(P[rel], [a, b], [ra, rb]), out=d[rel])
        return sl, d

    def paint(self, sl: tuple, mask: np.ndarray, value, label=0) -> None:
        hu, lab = self.hu[sl], self.lab[sl]
        hu[mask] = value[mask] if isinstance(value, np.ndarray) else value
        lab[mask] = label[mask] if isinstance(label, np.ndarray) else label


def render(p: np.ndarray, a: dict, texture: Callable[[float], np.ndarray], box: Box) -> tuple[np.ndarray, np.ndarray]:
    """Hounsfield units (float32, before blur and noise) and labels of anatomy ``a`` at the points ``p``."""
    h, cv, all_ = a["hu"], _Canvas(p, box), (slice(None),) * (p.ndim - 1)
    x, y, z = p[..., 0], p[..., 1], p[..., 2]
    psi = np.arctan2(y, x)
    depth = outline_radius(a["body"], psi, z) - np.hypot(x, y)
    fat_d, wall_d = wall_depth(a["body"], psi)
    dia = a["diaphragm"]
    zd = diaphragm_z(dia, x, y)
    grain, fine = texture(3.0), texture(1.5)
    on, table_y, table_hu = a["table"]
    if on:  # carbon-fibre table top over a foam core, curving up at the sides
        top = table_y + 0.0012 * x ** 2
        slab = (np.abs(x) < 230) & (y < top) & (y > top - 45)
        cv.paint(all_, slab & (depth < 0), np.where((y > top - 2.5) | (y < top - 42), table_hu, -920.0))
    cv.paint(all_, depth > 0, h["muscle"] - 10)  # skin
    cv.paint(all_, depth > 1.8, h["fat"] + 6 * grain)
    cv.paint(all_, depth > fat_d, h["muscle"] + 4 * grain)
    cavity = depth > wall_d
    rec = depth - wall_d - recess(dia, z, psi)
    cv.paint(all_, cavity, h["fat"] + 5 * grain)  # visceral and retroperitoneal fat
    cv.paint(all_, cavity & ((z > zd - dia["t"]) | (rec < dia["t"])), h["muscle"] + 4 * grain)  # the diaphragm
    thorax = cavity & ((z > zd) | (rec < 0))
    cv.paint(all_, thorax, np.where(fine > 2.0, h["blood"], h["lung"] + 15 * fine))  # lung, with small vessels
    (hc, hs) = a["heart"]
    heart = ell(p, hc, hs)
    cv.paint(all_, thorax & (heart < 1.25), h["fat"] + 5 * grain)  # pericardial fat
    cv.paint(all_, thorax & (heart < 1), 0.6 * h["aorta"] + 0.4 * h["muscle"] + 5 * grain)
    abdomen = cavity & (z < zd - dia["t"]) & (rec > dia["t"])
    _render_muscles(cv, a, abdomen, depth, fat_d, grain)
    _render_bowel(cv, a, abdomen, texture, grain, fine)
    _render_organs(cv, a, abdomen, texture, grain, fine)
    _render_bones(cv, a, depth, fat_d, wall_d, grain)
    hu = cv.hu + np.float32(h["offset"]) * (cv.hu > -900)
    return hu, cv.lab


def _render_muscles(cv: _Canvas, a: dict, abdomen: np.ndarray, depth: np.ndarray, fat_d: np.ndarray,
                    grain: np.ndarray) -> None:
    x, y, z, s, h = cv.p[..., 0], cv.p[..., 1], cv.p[..., 2], a["spine"], a["hu"]
    all_, muscle = (slice(None),) * x.ndim, h["muscle"] + 4 * grain
    px, py, sx, sy = s["para"]
    for side in (-1, 1):  # erector spinae, psoas, quadratus lumborum
        cv.paint(all_, (depth > fat_d) & (((x - side * px) / sx) ** 2 + ((y - py) / sy) ** 2 <= 1), muscle)
        r = np.clip((a["kidneys"]["left"][2] + 20 - z) * s["psoas_k"][0], 0, s["psoas_k"][1])
        cv.paint(all_, abdomen & ((x - side * s["psoas"][0]) ** 2 + (y - s["psoas"][1]) ** 2 < r ** 2), muscle)
        qx, qy, qa, qb = s["quad"]
        quad = (((x - side * qx) / qa) ** 2 + ((y - qy) / qb) ** 2 <= 1) & (z < a["kidneys"]["left"][2] + 20)
        cv.paint(all_, abdomen & quad, muscle)


def _render_bowel(cv: _Canvas, a: dict, abdomen: np.ndarray, texture, grain: np.ndarray, fine: np.ndarray) -> None:
    """Small-bowel loops (where two random fields both cross zero), colon with gas and faeces, stomach."""
    h, p, bw = a["hu"], cv.p, a["bowel"]
    all_ = (slice(None),) * (p.ndim - 1)
    s = texture(10.0) ** 2 + texture(10.0) ** 2
    region = abdomen & (p[..., 2] < bw["top"])
    cv.paint(all_, region & (s < bw["r"] ** 2), h["bowel"] + 5 * grain)
    gas = (texture(6.0) > bw["gas"]) & (p[..., 1] > 0)
    cv.paint(all_, region & (s < (0.6 * bw["r"]) ** 2), np.where(gas, -1000.0, h["fluid"] + 10 * grain))
    co = a["colon"]
    sl, d = cv.tube(co["pts"], co["r"])
    ab = abdomen[sl]
    cv.paint(sl, ab & (d < 1.15), h["bowel"] + 5 * grain[sl])
    g6, f = texture(6.0)[sl], fine[sl]
    faeces = np.where(f > 0.9, -850.0, -60 + 50 * f)
    cv.paint(sl, ab & (d < 1), np.where(g6 > co["gas"], -1000.0, faeces))
    st = a["stomach"]
    sl, d = cv.tube(st["pts"], st["r"])
    P, ab = p[sl], abdomen[sl]
    wall = 1 + st["wall"] / np.asarray(st["r"]).mean()
    cv.paint(sl, ab & (d < wall), h["bowel"] + 8 * grain[sl])
    lumen = ab & (d < 1)
    level = (P[..., 1][lumen].max() - st["gas"]) if lumen.any() else 0.0  # air rises anteriorly (supine)
    content = 250.0 + 40 * grain[sl] if st["contrast"] else h["fluid"] + 15 * grain[sl]
    cv.paint(sl, lumen, np.where(P[..., 1] > level, -1000.0, content))


def _render_organs(cv: _Canvas, a: dict, abdomen: np.ndarray, texture, grain: np.ndarray, fine: np.ndarray) -> None:
    h, p, ve = a["hu"], cv.p, a["vessels"]
    pa, sp = a["pancreas"], a["spleen"]
    sl, d = cv.tube(pa["pts"], pa["r"])
    cv.paint(sl, abdomen[sl] & (d < 1), np.where(fine[sl] < pa["fat"], h["fat"], h["pancreas"] + 5 * grain[sl]))
    sv = [pa["pts"][0], np.add(pa["pts"][1], (0, -12, 0)), ve["portal"][0]]  # splenic vein behind the pancreas
    sl, d = cv.tube(sv, [4.5] * 3)
    cv.paint(sl, abdomen[sl] & (d < 1), h["portal"])
    # liver (right and left lobes), gallbladder, hepatic and portal veins inside it
    lv = a["liver"]
    (cr, sr, rr), (cl, sl_, rl) = lv["right"], lv["left"]
    sl = cv.sphere(np.mean([cr, cl], 0), float(np.linalg.norm(np.subtract(cr, cl)) / 2 + max(sr) + 10))
    P, ab = p[sl], abdomen[sl]
    pw = lv["warp"](P)
    liver = ab & ((ell(pw, cr, sr, rr) <= 1) | (ell(pw, cl, sl_, rl) <= 1))
    cv.paint(sl, liver, h["liver"] + 4 * grain[sl], 4)
    gx, gy, gz, gr, gl, present = lv["gall"]
    if present:
        cv.paint(sl, ab & (ell(P, (gx, gy, gz), (gr, gr, gl), rotation((20, 15, 0))) <= 1), h["bile"] + 3 * grain[sl])
    ivc_top = ve["ivc"][2]
    lab = cv.lab[sl]
    for end in ve["hepatic"]:
        cv.paint(sl, (lab == 4) & (tube(P, [ivc_top, end], [6, 2.5]) < 1), h["vein"] + 3 * grain[sl], 4)
    cv.paint(sl, ab & (tube(P, ve["portal"], [ve["portal_r"]] * 3) < 1), h["portal"] + 3 * grain[sl],
             np.where(lab == 4, 4, 0).astype(np.uint8))
    # spleen: banana-shaped ellipsoid against the wall, with a hilum and notches, in a thin partial fat plane
    c, semi, rot = np.asarray(sp["c"]), np.asarray(sp["semi"]), sp["rot"]
    sl = cv.sphere(c, float(semi.max() * 1.4 + 10))
    P, ab = p[sl], abdomen[sl]
    q = (sp["warp"](P) - c.astype(P.dtype)) @ rot.astype(P.dtype)
    q[..., 2] -= (q[..., 0] ** 2 + q[..., 1] ** 2) / (2 * sp["bend"])
    spleen = ell(q, (0, 0, 0), semi) <= 1
    spleen &= ell(q, (0, 0, semi[2]), semi * (0.3, 0.25, 0.5)) > 1
    for fu, fv, r in sp["notches"]:
        spleen &= ell(q, (fu * semi[0], fv * semi[1], 0), (r, r, semi[2] * 1.5)) > 1
    shell = ab & ~spleen & (ell(q, (0, 0, 0), semi + 3) <= 1) & (grain[sl] > -0.5)
    cv.paint(sl, shell, h["fat"] + 5 * grain[sl])
    mottle = h["spleen_mottle"] * texture(5.0)[sl]
    cv.paint(sl, spleen & ab, h["spleen"] + 4 * grain[sl] + mottle, 1)
    _render_kidneys(cv, a, abdomen, texture, grain)
    _render_vessels(cv, a, fine)


def _render_kidneys(cv: _Canvas, a: dict, abdomen: np.ndarray, texture, grain: np.ndarray) -> None:
    h, p, kd, ve = a["hu"], cv.p, a["kidneys"], a["vessels"]
    semi = np.asarray(kd["semi"])
    post, med, gam = kd["tilt"]
    pyramids = texture(4.0)
    for label, side, c, warp in ((2, 1, kd["right"], kd["warps"][0]), (3, -1, kd["left"], kd["warps"][1])):
        rot = rotation((post, -side * med, -side * gam))
        hil = np.asarray(c) + rot @ np.array([-side * semi[0], 0, 0])
        ivc_x = ve["ivc"][0][0]
        vein = [hil, (ivc_x * (1 - side) / 2 - 10 * side, hil[1] + 25, hil[2]), (ivc_x, ve["ivc"][0][1], hil[2] + 5)]
        sl, d = cv.tube(vein, [5, 5, 5])
        cv.paint(sl, abdomen[sl] & (d < 1), h["vein"])
        sl = cv.sphere(c, float(semi.max() * 1.6 + 10))
        P, ab, g = p[sl], abdomen[sl], grain[sl]
        pw = warp(P)
        cv.paint(sl, ab & (ell(pw, c, semi * kd["fat"], rot) <= 1), h["fat"] + 8 * g)  # perirenal fat
        kidney = ab & (ell(pw, c, semi, rot) <= 1)
        sinus = ell(pw, hil, semi * (0.6, 0.4, 0.35), rot) <= 1
        medulla = (ell(pw, c, semi - 6, rot) <= 1) & (pyramids[sl] > -0.3)
        cv.paint(sl, kidney & ~sinus, np.where(medulla, h["kidney_m"], h["kidney_c"]) + 3 * g, label)
        cv.paint(sl, kidney & sinus, np.where(ell(pw, hil, semi * (0.35, 0.2, 0.2), rot) <= 1, h["urine"], h["fat"]))


def _render_vessels(cv: _Canvas, a: dict, fine: np.ndarray) -> None:
    h, ve = a["hu"], a["vessels"]
    pts, r, calcified = ve["aorta"]
    sl, d = cv.tube(pts, [r] * len(pts))
    cv.paint(sl, d < 1, h["aorta"])
    if calcified:
        cv.paint(sl, (d > 0.8) & (d < 1.05) & (fine[sl] > 1.6), 0.6 * h["bone"])
    sl, d = cv.tube(ve["ivc"], [ve["ivc_r"]] * 4)
    cv.paint(sl, d < 1, h["vein"])


def _render_bones(cv: _Canvas, a: dict, depth: np.ndarray, fat_d: np.ndarray, wall_d: np.ndarray,
                  grain: np.ndarray) -> None:
    """Vertebrae (body, cortex, discs, arch, spinous and transverse processes, canal) and ribs 4-12."""
    h, s, p = a["hu"], a["spine"], cv.p
    x, y, z = p[..., 0], p[..., 1] - s["y"], p[..., 2]
    all_ = (slice(None),) * x.ndim
    level = (z - s["phase"]) % s["period"]
    disc = level < s["disc"]
    vb = (x / s["rx"]) ** 2 + (y / s["ry"]) ** 2
    cv.paint(all_, vb <= 1, np.where(disc, h["disc"], h["bone"]))
    cv.paint(all_, ~disc & ((x / (s["rx"] - 2)) ** 2 + (y / (s["ry"] - 2)) ** 2 <= 1), h["marrow"] + 20 * grain)
    yc = -s["ry"] - 9
    r = np.hypot(x, y - yc)
    post = ~disc & (((r > 8.5) & (r < 14) & (y < yc + 4))  # arch
                    | ((np.abs(x) < 4) & (y < yc - 10) & (y > yc - 42) & (level < s["disc"] + 0.6 * s["period"]))
                    | ((np.abs(y - yc - 3) < 4) & (np.abs(x) > 12) & (np.abs(x) < 32) & (level < s["disc"] + 8)))
    cv.paint(all_, post, 0.7 * h["bone"] + 20 * grain)
    cv.paint(all_, r <= 8.5, h["csf"])
    rb = a["ribs"]
    zone = np.nonzero((depth > fat_d - 2) & (depth < wall_d + 2) & (z < rb["z12"] + 7 * rb["pitch"] + 60))
    phi = np.abs(np.arctan2(x[zone], -(p[..., 1][zone])))  # 0 behind, pi in front
    dr = (depth[zone] - wall_d[zone] + rb["t"][0] + 1) / rb["t"][0]
    zz = z[zone]
    value, out = cv.hu[zone], np.zeros(len(zz), dtype=bool)
    for k in range(7):  # ribs 12 (floating, short) to 6
        end = np.pi * (0.35, 0.5, 0.7, 0.8, 0.8, 0.8, 0.85, 0.9, 0.9)[k]
        zc = rb["z12"] + k * rb["pitch"] - rb["drop"] * (1 - np.cos(np.minimum(phi, end))) / 2  # down and forwards
        zc = zc + np.maximum(phi - end, 0) * 45  # costal cartilages rise towards the sternum
        rr = dr ** 2 + ((zz - zc) / rb["t"][1]) ** 2
        bone = (rr <= 1) & (phi > 0.12 * np.pi) & (phi < end)
        cart = (rr <= 1) & (phi >= end) & (phi < 0.95 * np.pi) & (k >= 2)
        value = np.where(bone, np.where(rr < 0.5, h["marrow"], h["bone"]), np.where(cart, h["cartilage"], value))
        out |= bone | cart
    cv.hu[zone] = value
    lab = cv.lab[zone]
    lab[out] = 0
    cv.lab[zone] = lab
