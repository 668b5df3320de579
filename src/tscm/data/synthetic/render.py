"""Ray-cast rendering of one synthetic street: facades, road, sky, moving occluders and weather.

A street is a straight corridor in a local frame: `s` metres along it, `l` metres to the left
of its centre line, `z` metres up. Facades are the planes l = ±width/2; every pixel's ray is
intersected analytically with them, the ground and a few boxes, so a whole image is a handful
of vectorised numpy operations.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

FAR_M = 400.0  # rays travelling further are treated as reaching the horizon
PADDING_M = 250.0  # facades continue this far past both street ends, so views down the street stay filled
SIDEWALK_M = 3.0
LOOKUP_STEP_M = 0.02


@dataclass(frozen=True)
class Facades:
    """Buildings of a street as parallel arrays, one entry per building (left side first)."""

    start: np.ndarray  # metres along the street where the building begins
    width: np.ndarray
    height: np.ndarray  # 0 marks an empty lot
    wall: np.ndarray  # (B, 3) albedo
    trim: np.ndarray  # (B, 3) cornice and floor bands
    glass: np.ndarray  # (B, 3)
    floor_h: np.ndarray
    win_pitch: np.ndarray  # horizontal window spacing, adjusted so a whole number fits
    win_w: np.ndarray  # window width as a fraction of the pitch
    win_h: np.ndarray  # window height as a fraction of the floor
    win_style: np.ndarray  # 0 plain, 1 arched, 2 ribbon, 3 paired
    has_sign: np.ndarray  # bool: a shop with a sign on the ground floor
    sign_rgb: np.ndarray  # (B, 3)
    letter_rgb: np.ndarray  # (B, 3)
    sign_z: np.ndarray  # bottom of the sign
    sign_span: np.ndarray  # fraction of the width the sign covers
    letter_pitch: np.ndarray
    door_u: np.ndarray  # door position, metres from the building start


@dataclass(frozen=True)
class Street:
    """One street: its length, the distance between its facades, and its buildings."""

    length_m: float
    width_m: float
    road_grey: float
    facades: Facades
    num_left: int  # facades[:num_left] line the left side, the rest the right side

    def __post_init__(self) -> None:
        # Building index every LOOKUP_STEP_M metres along each side: a table read is far
        # cheaper than a binary search per ray.
        tables = []
        for left in (True, False):
            starts = self.facades.start[: self.num_left] if left else self.facades.start[self.num_left :]
            grid = starts[0] + LOOKUP_STEP_M * np.arange(int((starts[-1] - starts[0]) / LOOKUP_STEP_M) + 2)
            index = np.searchsorted(starts, grid, side="right") - 1 + (0 if left else self.num_left)
            tables.append((float(starts[0]), index.astype(np.int32)))
        object.__setattr__(self, "_tables", tuple(tables))

    def building_at(self, left: bool, s: np.ndarray) -> np.ndarray:
        """Index into `facades` of the building at `s` metres on the given side."""
        first, table = self._tables[0 if left else 1]
        cell = ((s - first) * (1.0 / LOOKUP_STEP_M)).astype(np.int64)
        return table.take(cell, mode="clip")


@dataclass(frozen=True)
class Camera:
    """A pinhole camera in the street frame; yaw is clockwise from looking along +s."""

    s: float
    l: float
    height: float
    yaw_deg: float
    pitch_deg: float
    fov_deg: float


@dataclass(frozen=True)
class Conditions:
    """Illumination, weather and transient objects of one image."""

    sun_azimuth_deg: float  # clockwise from +s
    sun_elevation_deg: float
    ambient: np.ndarray  # (3,) light on every surface
    direct: np.ndarray  # (3,) added sunlight on lit surfaces
    sky_rgb: np.ndarray
    haze_rgb: np.ndarray
    visibility_m: float
    gain: np.ndarray  # (3,) camera white balance
    gamma: float
    blur_px: float
    noise_std: float
    boxes: np.ndarray  # (K, 8): s0, s1, l0, l1, top, r, g, b — moving vehicles and pedestrians


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6.0).astype(np.int64) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack(
        [np.stack([v, t, p], -1), np.stack([q, v, p], -1), np.stack([p, v, t], -1),
         np.stack([p, q, v], -1), np.stack([t, p, v], -1), np.stack([v, p, q], -1)], 0
    )
    return table[i, np.arange(len(h))]


def _side_buildings(rng: np.random.Generator, length_m: float) -> dict[str, np.ndarray]:
    starts, widths = [], []
    position = -PADDING_M
    while position < length_m + PADDING_M:
        width = float(rng.uniform(5.0, 22.0))
        starts.append(position)
        widths.append(width)
        position += width
    n = len(starts)
    width = np.asarray(widths)
    floor_h = rng.uniform(2.9, 4.2, n)
    floors = rng.integers(1, 8, n)
    height = floors * floor_h + rng.uniform(0.5, 1.5, n)
    height[rng.random(n) < 0.06] = 0.0  # empty lots open the view to the sky

    # Wall colours: mostly muted brick, stone and render, some painted brightly.
    hue = np.where(rng.random(n) < 0.5, rng.uniform(0.0, 0.1, n), rng.random(n))
    sat = np.where(rng.random(n) < 0.75, rng.uniform(0.05, 0.45, n), rng.uniform(0.45, 0.8, n))
    wall = hsv_to_rgb(hue, sat, rng.uniform(0.3, 0.95, n))
    trim_white = rng.random(n) < 0.4
    trim = np.where(trim_white[:, None], rng.uniform(0.8, 0.95, (n, 1)), wall * rng.uniform(0.35, 0.7, (n, 1)))
    glass = hsv_to_rgb(rng.uniform(0.5, 0.7, n), rng.uniform(0.1, 0.5, n), rng.uniform(0.08, 0.35, n))

    margin = 0.6
    pitch = rng.uniform(1.4, 4.0, n)
    columns = np.maximum(1, np.floor((width - 2 * margin) / pitch))
    win_pitch = np.maximum(width - 2 * margin, 0.5) / columns

    has_sign = rng.random(n) < 0.45
    sign_rgb = hsv_to_rgb(rng.random(n), rng.uniform(0.6, 1.0, n), rng.uniform(0.55, 1.0, n))
    letter_rgb = np.where(rng.random((n, 1)) < 0.5, 0.95, 0.05) * np.ones((1, 3))
    return {
        "start": np.asarray(starts),
        "width": width,
        "height": height,
        "wall": wall,
        "trim": trim,
        "glass": glass,
        "floor_h": floor_h,
        "win_pitch": win_pitch,
        "win_w": rng.uniform(0.3, 0.75, n),
        "win_h": rng.uniform(0.35, 0.7, n),
        "win_style": rng.integers(0, 4, n),
        "has_sign": has_sign,
        "sign_rgb": sign_rgb,
        "letter_rgb": letter_rgb,
        "sign_z": rng.uniform(2.4, 3.0, n) * np.minimum(1.0, floor_h / 3.0),
        "sign_span": rng.uniform(0.5, 0.95, n),
        "letter_pitch": rng.uniform(0.45, 0.9, n),
        "door_u": rng.uniform(0.2, 0.8, n) * np.maximum(width - 1.2, 0.0),
    }


def make_street(rng: np.random.Generator, length_m: float) -> Street:
    """Draw a street's buildings; the same generator state always gives the same street."""
    width_m = float(rng.uniform(16.0, 26.0))
    road_grey = float(rng.uniform(0.22, 0.36))
    left, right = _side_buildings(rng, length_m), _side_buildings(rng, length_m)
    joined = {key: np.concatenate([left[key], right[key]]) for key in left}
    # float32 keeps every per-ray computation in single precision (half the memory traffic)
    facades = Facades(**{k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in joined.items()})
    return Street(length_m, width_m, road_grey, facades, num_left=len(left["start"]))


@lru_cache(maxsize=8)
def _camera_rays(size: int, fov_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Normalised image-plane coordinates (x right, y up) of every pixel centre."""
    half = np.tan(np.radians(fov_deg) / 2.0)
    centres = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x = np.broadcast_to(centres[None, :] * half, (size, size)).astype(np.float32)
    y = np.broadcast_to(-centres[:, None] * half, (size, size)).astype(np.float32)
    return x.ravel(), y.ravel()


def _ray_directions(camera: Camera, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit ray directions (s, l, z components) of every pixel, row-major from the top left."""
    x, y = _camera_rays(size, camera.fov_deg)
    yaw, pitch = np.radians(camera.yaw_deg), np.radians(camera.pitch_deg)
    ahead = np.array([np.cos(yaw), -np.sin(yaw), 0.0])
    right = np.array([-np.sin(yaw), -np.cos(yaw), 0.0])
    up_world = np.array([0.0, 0.0, 1.0])
    forward = np.cos(pitch) * ahead + np.sin(pitch) * up_world
    up = -np.sin(pitch) * ahead + np.cos(pitch) * up_world
    ds, dl, dz = (np.float32(forward[i]) + x * np.float32(right[i]) + y * np.float32(up[i]) for i in range(3))
    norm = np.sqrt(ds * ds + dl * dl + dz * dz)
    return ds / norm, dl / norm, dz / norm


def _hash01(*keys: np.ndarray) -> np.ndarray:
    """A fixed pseudo-random number in [0, 1) for each tuple of integer keys (window, letter)."""
    value = np.zeros(np.broadcast(*keys).shape, dtype=np.uint64)
    for key, prime in zip(keys, (0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D)):
        value = (value ^ (key.astype(np.int64).astype(np.uint64) * np.uint64(prime))) * np.uint64(0x27D4EB2F)
        value ^= value >> np.uint64(15)
    return (value % np.uint64(10007)).astype(np.float32) / 10007.0


def _facade_albedo(f: Facades, b: np.ndarray, u: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Colour of facade points: building `b`, `u` metres from its start, `z` metres up."""
    width, height, floor_h = f.width[b], f.height[b], f.floor_h[b]
    floor = np.floor(z / floor_h)
    v = z / floor_h - floor
    margin = 0.6
    inside = (u > margin) & (u < width - margin)

    grid = (u - margin) / f.win_pitch[b]
    column = np.floor(grid)
    fu = grid - column
    with np.errstate(divide="ignore"):  # zero-sized windows mean a blank wall
        dx = np.abs(fu - 0.5) / (f.win_w[b] / 2)
        dy = (v - 0.5) / (f.win_h[b] / 2)
    style = f.win_style[b]
    in_box = (dx < 1) & (np.abs(dy) < 1)
    arched = in_box & ((dy < 0.3) | (dx**2 + ((dy - 0.3) / 0.7) ** 2 < 1))
    ribbon = (np.abs(dy) < 1) & (np.abs(fu - 0.5) < 0.46)
    paired = in_box & (np.abs(fu - 0.5) > 0.05)
    shape = np.select([style == 0, style == 1, style == 2], [in_box, arched, ribbon], paired)

    shop = f.has_sign[b]
    window = inside & shape & (z < height - 0.9) & ~((floor == 0) & shop)
    band = (np.abs(v) < 0.05) & (floor >= 1)
    cornice = (z > height - 0.5) & (height > 0)

    sign_z = f.sign_z[b]
    span_half = f.sign_span[b] * width / 2
    offset = u - width / 2
    in_sign = shop & (z > sign_z) & (z < sign_z + 0.9) & (np.abs(offset) < span_half)
    letter_pos = (offset + span_half) / f.letter_pitch[b]
    letter_index = np.floor(letter_pos)
    letter_frac = letter_pos - letter_index
    sign_v = (z - sign_z) / 0.9
    letter = (
        in_sign & (letter_frac > 0.15) & (letter_frac < 0.8) & (sign_v > 0.2) & (sign_v < 0.8)
        & (_hash01(b, letter_index) > 0.2)
    )
    shopfront = shop & inside & (z < sign_z - 0.15) & (z > 0.3)
    door = (u > f.door_u[b]) & (u < f.door_u[b] + 1.2) & (z < 2.2) & ~shop

    # One material per point (later features paint over earlier ones), then one palette lookup.
    material = np.select([door, shopfront, letter, in_sign, band | cornice, window],
                         [_DOOR, _SHOPFRONT, _LETTER, _SIGN, _TRIM, _WINDOW], _WALL)
    colour = _palette(f)[b, material]
    shade = 0.6 + 0.8 * _hash01(b, floor, column)  # curtains and lights differ window to window
    return colour * np.where(material == _WINDOW, shade, 1.0).astype(np.float32)[:, None]


_WALL, _WINDOW, _TRIM, _SIGN, _LETTER, _SHOPFRONT, _DOOR = range(7)


def _palette(f: Facades) -> np.ndarray:
    """(B, 7, 3) colours of each building's materials, indexed by the material codes above."""
    return np.stack(
        [f.wall, f.glass, f.trim, f.sign_rgb, f.letter_rgb, np.minimum(f.glass * 1.8 + 0.1, 1.0), f.trim * 0.4], 1
    ).astype(np.float32)


def _ground_albedo(street: Street, s: np.ndarray, l: np.ndarray) -> np.ndarray:
    half = street.width_m / 2
    grey = np.full(s.shape, street.road_grey, dtype=np.float32)
    sidewalk = np.abs(l) > half - SIDEWALK_M
    grey = np.where(sidewalk, 0.55, grey)
    curb = np.abs(np.abs(l) - (half - SIDEWALK_M)) < 0.15
    grey = np.where(curb, 0.7, grey)
    dashes = (np.abs(l) < 0.1) & (np.mod(s, 6.0) < 3.0)
    colour = np.repeat(grey[:, None], 3, axis=1)
    return np.where(dashes[:, None], np.array([0.85, 0.75, 0.3], dtype=np.float32), colour)


def _box_hits(origin: tuple[float, float, float], dirs: tuple[np.ndarray, np.ndarray, np.ndarray],
              boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance to the nearest box along each ray (inf if none) and that box's index (slab test)."""
    best_t = np.full(len(dirs[0]), np.inf, dtype=np.float32)
    best_box = np.zeros(len(dirs[0]), dtype=np.int64)
    inverse = []
    for axis in range(3):
        direction = np.where(np.abs(dirs[axis]) < 1e-9, np.float32(1e-9), dirs[axis])
        inverse.append(1.0 / direction)
    for index, box in enumerate(boxes):
        near, far = None, None
        for axis, (low, high) in enumerate(((box[0], box[1]), (box[2], box[3]), (0.0, box[4]))):
            t1 = np.float32(low - origin[axis]) * inverse[axis]
            t2 = np.float32(high - origin[axis]) * inverse[axis]
            entry, leave = np.minimum(t1, t2), np.maximum(t1, t2)
            near = entry if near is None else np.maximum(near, entry)
            far = leave if far is None else np.minimum(far, leave)
        hit = (near <= far) & (near > 0.05) & (near < best_t)
        best_t = np.where(hit, near, best_t)
        best_box[hit] = index
    return best_t, best_box


def _shadow_height(street: Street, s: np.ndarray, l_from: float, sun_az: float, tan_elev: float,
                   lit_side_left: bool, l_point: np.ndarray) -> np.ndarray:
    """Height below which points at (s, l_point) lie in the shadow of the facades on the sun's side."""
    sin_az = abs(np.sin(np.radians(sun_az)))
    run = np.abs(l_point - l_from) / max(sin_az, 1e-3)  # horizontal path to the shading facade
    s_at = s + run * np.cos(np.radians(sun_az))
    blocker = street.facades.height[street.building_at(not lit_side_left, s_at)]
    return blocker - run * tan_elev


def render(street: Street, camera: Camera, conditions: Conditions, size: int, supersample: int,
           rng: np.random.Generator) -> np.ndarray:
    """Render one image (size × size × 3, uint8)."""
    full = size * supersample
    ds, dl, dz = _ray_directions(camera, full)
    half = street.width_m / 2
    f = street.facades

    with np.errstate(divide="ignore"):
        t_wall = np.where(dl > 0, (half - camera.l) / dl, np.where(dl < 0, (-half - camera.l) / dl, np.inf))
        t_ground = np.where(dz < 0, -camera.height / dz, np.inf)
    left_side = dl > 0
    s_wall = camera.s + t_wall * ds
    z_wall = camera.height + t_wall * dz
    building = np.where(left_side, street.building_at(True, s_wall), street.building_at(False, s_wall))
    on_wall = (z_wall >= 0) & (z_wall <= f.height[building]) & (t_wall < FAR_M)
    on_ground = ~on_wall & (t_ground < FAR_M)
    t_box, box_index = _box_hits((camera.s, camera.l, camera.height), (ds, dl, dz), conditions.boxes)
    surface_t = np.where(on_wall, t_wall, np.where(on_ground, t_ground, np.inf))
    on_box = t_box < surface_t
    on_wall &= ~on_box
    on_ground &= ~on_box

    sun_az, elev = conditions.sun_azimuth_deg, np.radians(conditions.sun_elevation_deg)
    tan_elev = np.tan(elev)
    sun_h = np.array([np.cos(np.radians(sun_az)), -np.sin(np.radians(sun_az))])
    lit_side_left = bool(np.sin(np.radians(sun_az)) > 0)  # sun on the right shines on the left facades

    colour = np.empty((len(ds), 3), dtype=np.float32)
    distance = np.full(len(ds), FAR_M, dtype=np.float32)

    idx = np.flatnonzero(on_wall)
    if len(idx):
        b = building[idx]
        u = s_wall[idx] - f.start[b]
        albedo = _facade_albedo(f, b, u, z_wall[idx])
        is_left = left_side[idx]
        facing_sun = is_left == lit_side_left
        wall_l = np.where(is_left, half, -half)
        shadow_z = _shadow_height(street, s_wall[idx], -half if lit_side_left else half, sun_az, tan_elev,
                                  lit_side_left, wall_l)
        lit = facing_sun & (z_wall[idx] > shadow_z)
        incidence = abs(sun_h[1]) * np.cos(elev)
        light = conditions.ambient[None, :] + conditions.direct[None, :] * (lit * incidence)[:, None]
        colour[idx] = albedo * light
        distance[idx] = t_wall[idx]

    idx = np.flatnonzero(on_ground)
    if len(idx):
        t = t_ground[idx]
        s_g, l_g = camera.s + t * ds[idx], camera.l + t * dl[idx]
        albedo = _ground_albedo(street, s_g, l_g)
        shadow_z = _shadow_height(street, s_g, -half if lit_side_left else half, sun_az, tan_elev,
                                  lit_side_left, l_g)
        lit = shadow_z < 0
        light = conditions.ambient[None, :] + conditions.direct[None, :] * (lit * np.sin(elev))[:, None]
        colour[idx] = albedo * light
        distance[idx] = t

    idx = np.flatnonzero(on_box)
    if len(idx):
        box = conditions.boxes[box_index[idx]]
        colour[idx] = box[:, 5:8] * (conditions.ambient + 0.5 * conditions.direct)[None, :]
        distance[idx] = t_box[idx]

    idx = np.flatnonzero(~(on_wall | on_ground | on_box))
    if len(idx):
        up = np.clip(dz[idx], 0.0, 1.0)[:, None] ** 0.5
        colour[idx] = conditions.haze_rgb * (1 - up) + conditions.sky_rgb * up

    clear = np.exp(-distance / conditions.visibility_m)[:, None]
    colour = colour * clear + conditions.haze_rgb[None, :] * (1 - clear)
    colour = np.clip(colour * conditions.gain[None, :], 0.0, 1.0) ** conditions.gamma

    grid = colour.reshape(full, full, 3)
    image = sum(grid[i::supersample, j::supersample] for i in range(supersample) for j in range(supersample))
    image = image / supersample**2
    if conditions.noise_std > 0:
        image = image + rng.normal(0.0, conditions.noise_std, image.shape)
    pixels = Image.fromarray(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if conditions.blur_px > 0.05:
        pixels = pixels.filter(ImageFilter.GaussianBlur(conditions.blur_px))
    return np.asarray(pixels)
