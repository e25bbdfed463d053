"""What medsi hands to the hospital.

DICOM-SEG, DICOM SR (TID 1500), the converted source series of a NIfTI input, and the HTML
report (DESIGN.md section 5).
"""
