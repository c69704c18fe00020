"""Meshes and skeletons of a segmentation, as neuroglancer precomputed, and 3-D pictures.

Modules: :mod:`.meshing` (one block: marching cubes with zmesh, TEASAR skeletons with
kimimaro), :mod:`.precomputed` (the on-disk format neuroglancer reads), :mod:`.build` (the
blockwise job behind ``neuroflood mesh``), :mod:`.render` (matplotlib pictures of meshes) and
:mod:`.commands` (the command line). docs/meshes.md says why these libraries.
"""
