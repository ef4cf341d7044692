"""Painting the anatomy of :mod:`monai_xres.sample_data.anatomy` on a grid (generator version 3): structure by
structure, in Hounsfield units and labels, from the per-seed description that
:func:`~monai_xres.sample_data.anatomy.draw` returns. Later structures overwrite earlier ones, labels included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from monai_xres.sample_data.anatomy import Box, diaphragm_z, ell, outline_radius, recess, rotation, tube, wall_depth

__all__ = ["render"]


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
    level = (P[..., 1][lumen].max() - st["gas"]) if lumen.any() else 0.0  # air collects anteriorly (supine)
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
    wrap, (lu, lv, lw), lobe = sp["lobe"]
    if wrap:
        spleen |= ell(q, (lu * semi[0], lv * semi[1], lw * semi[2]), semi * lobe) <= 1
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
        zc = zc + np.maximum(phi - end, 0) * 45  # costal cartilages climb towards the sternum
        rr = dr ** 2 + ((zz - zc) / rb["t"][1]) ** 2
        bone = (rr <= 1) & (phi > 0.12 * np.pi) & (phi < end)
        cart = (rr <= 1) & (phi >= end) & (phi < 0.95 * np.pi) & (k >= 2)
        value = np.where(bone, np.where(rr < 0.5, h["marrow"], h["bone"]), np.where(cart, h["cartilage"], value))
        out |= bone | cart
    cv.hu[zone] = value
    lab = cv.lab[zone]
    lab[out] = 0
    cv.lab[zone] = lab
