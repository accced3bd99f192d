"""The engine: models, drafters, HSD loop, LoBi, retrieval. No ROS imports here."""
