"""medxai: counterfactual explanations of black-box image classifiers (transforms, networks,
diffusion, explainers, metrics, phantoms). Never imports dicom_io; pipelines/ joins the two."""

__version__ = "0.1.0"
