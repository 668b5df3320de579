"""The built-in synthetic city: street plans (`city`), the ray-cast renderer (`render`), and the
`synthetic:<preset>` data spec that generates a city on first use and reuses it after."""
